"""Loading native code only when this code built it (issue 14, item 8): the sha256 recorded at
build is checked before every load, and a cache folder or file another user could change is
never used. Each planted library has a constructor that leaves a file behind if it ever runs."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from pathlib import Path

import pytest

from headscope.native import build as native_build

SOURCE = "int headscope_answer(void) { return 42; }\n"
FLAGS = ("-O1", "-fPIC", "-shared")


def planted_source(marker: Path) -> str:
    """A library that passes the self-check below and writes `marker` when it is loaded."""
    return (
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void planted(void) {\n"
        f'    FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}\n'
        "}\n" + SOURCE
    )


def self_check(library, path: Path) -> Path:
    if library.headscope_answer() != 42:
        raise ValueError("wrong answer")
    return path


@pytest.fixture()
def source(tmp_path) -> Path:
    path = tmp_path / "answer.c"
    path.write_text(SOURCE)
    return path


def expected_path(source: Path, folder: Path) -> Path:
    return native_build.library_path(native_build.compiler(), source, FLAGS, folder, "answer")


def plant(tmp_path: Path, target: Path) -> Path:
    """Compile the planted library to `target`; returns its marker's path."""
    marker = tmp_path / "constructor-ran"
    planted = tmp_path / "planted.c"
    planted.write_text(planted_source(marker))
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([native_build.compiler(), *FLAGS, str(planted), "-o", str(target)], check=True)
    return marker


def load(source: Path, folder: Path) -> Path | None:
    return native_build.load("answer", source, FLAGS, self_check, cache_dir=folder)


def test_a_build_records_its_hash_and_is_reused(tmp_path, source):
    folder = tmp_path / "cache"
    path = load(source, folder)
    assert path is not None and path.parent == folder
    record = native_build.record_path(path)
    assert record.read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert oct(folder.stat().st_mode & 0o777) == oct(0o700)
    built = path.stat().st_mtime_ns
    assert load(source, folder) == path and path.stat().st_mtime_ns == built


@pytest.mark.parametrize("record", ["none", "wrong"])
def test_a_planted_library_without_its_builds_hash_is_never_loaded(
    tmp_path, source, record, caplog
):
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    target = expected_path(source, folder)
    marker = plant(tmp_path, target)
    if record == "wrong":
        native_build.record_path(target).write_text("0" * 64 + "\n")
    planted_hash = hashlib.sha256(target.read_bytes()).hexdigest()
    path = load(source, folder)
    assert not marker.exists(), "the planted library's constructor ran"
    # Rebuilt in its place from the real source, with its own record.
    assert path == target
    assert hashlib.sha256(path.read_bytes()).hexdigest() != planted_hash
    assert native_build.is_recorded_build(path)


def test_a_world_writable_cache_folder_is_refused(tmp_path, source, caplog):
    """Even a library whose record matches is not loaded from a folder others can write: the
    build goes to a private folder of this process instead."""
    folder = tmp_path / "shared-cache"
    folder.mkdir()
    os.chmod(folder, 0o777)
    target = expected_path(source, folder)
    marker = plant(tmp_path, target)
    native_build.record_path(target).write_text(
        hashlib.sha256(target.read_bytes()).hexdigest() + "\n"
    )
    with caplog.at_level(logging.WARNING, logger="headscope.native"):
        path = load(source, folder)
    assert not marker.exists(), "the planted library's constructor ran"
    assert path is not None and path.parent != folder
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert "writable by group or others" in caplog.text


def test_a_folder_under_a_world_writable_parent_is_refused(tmp_path, source):
    """XDG_CACHE_HOME pointing at a world-writable folder: our 0700 folder inside it could be
    renamed away and replaced, so it is not used either."""
    parent = tmp_path / "xdg"
    parent.mkdir()
    os.chmod(parent, 0o777)
    path = load(source, parent / "headscope" / "kernels")
    assert path is not None and parent not in path.parents


def test_a_library_file_others_can_write_is_rebuilt(tmp_path, source):
    folder = tmp_path / "cache"
    path = load(source, folder)
    os.chmod(path, 0o666)
    assert not native_build.is_recorded_build(path)
    assert load(source, folder) == path
    assert native_build.is_recorded_build(path) and path.stat().st_mode & 0o022 == 0


def test_any_load_failure_is_no_library_with_one_log_line(tmp_path, source, caplog):
    def failing_check(library, path):
        raise RuntimeError("self-check mismatch")

    with caplog.at_level(logging.WARNING, logger="headscope.native"):
        assert (
            native_build.load(
                "answer", source, FLAGS, failing_check, cache_dir=tmp_path, instead="in Python"
            )
            is None
        )
        assert (
            native_build.load(
                "answer", source, FLAGS, lambda lib, _: lib.missing, cache_dir=tmp_path
            )
            is None
        )
    assert [record.exc_info for record in caplog.records] == [None, None]
    assert "self-check mismatch" in caplog.records[0].getMessage()
    assert caplog.records[0].getMessage().endswith("; in Python.")
    assert "missing" in caplog.records[1].getMessage()
    with pytest.raises(native_build.NativeUnavailable, match="mismatch"):
        native_build.load("answer", source, FLAGS, failing_check, cache_dir=tmp_path, required=True)
