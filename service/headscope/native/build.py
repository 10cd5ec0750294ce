"""Compiling headscope's C sources on the serving machine, once, into a cache, and loading them
only when they are what this code built (torch-free).

A library is stored under a hash of its source, flags, compiler version and CPU, so a changed
source, compiler or machine builds anew. It is built in a temporary file and renamed into place,
so a concurrent start or a killed build never leaves half a library under the final name, and the
built file's sha256 is recorded beside it (`<library>.sha256`, also renamed into place).

Loading a shared library runs its code (its constructors) inside this process, so nothing is
loaded that this code did not build: before every load the file's sha256 must match its record,
and the cache folder, its parents and both files must be owned by this user (or root, for the
parents) and writable by no one else (a sticky parent such as /tmp excepted). A folder that fails
is not used: the library is built into a private folder of this process instead. Any failure to
build, load or self-check a library means "no native library", with one log line.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("headscope.native")

COMPILE_TIMEOUT_S = 60
RECORD_SUFFIX = ".sha256"

Checked = TypeVar("Checked")


class NativeUnavailable(Exception):
    """Why a native library is not used (raised by `load(..., required=True)`)."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headscope" / "kernels"


def cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = [
                line for line in cpuinfo if line.startswith(("model name", "flags", "Features"))
            ]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def load(
    name: str,
    source: Path,
    flags: Sequence[str],
    self_check: Callable[[ctypes.CDLL, Path], Checked],
    *,
    cache_dir: Path | None = None,
    required: bool = False,
    instead: str = "running without it",
) -> Checked | None:
    """`self_check(library, path)` of the library built from `source`, or None without one.

    The library comes from the cache when its recorded hash matches, else it is compiled now.
    `self_check` wraps it (finding its symbols) and compares it with a reference; whatever it
    raises, like any build or load failure, means no library: one warning line ("...; `instead`")
    and None, or NativeUnavailable with the reason when `required`.
    """
    try:
        library, path = _load_trusted(name, source, flags, cache_dir or default_cache_dir())
        return self_check(library, path)
    except Exception as err:  # any failure, including a self-check's, means "no library"
        reason = _describe(err)
        if required:
            raise NativeUnavailable(reason) from err
        log.warning("The native %s library is unavailable (%s); %s.", name, reason, instead)
        return None


def _describe(err: Exception) -> str:
    stderr = getattr(err, "stderr", None)
    detail = stderr.decode(errors="replace")[-500:].strip() if isinstance(stderr, bytes) else ""
    return f"{type(err).__name__}: {err}" + (f" {detail}" if detail else "")


def _load_trusted(
    name: str, source: Path, flags: Sequence[str], cache_dir: Path
) -> tuple[ctypes.CDLL, Path]:
    compiler_path = compiler()
    if compiler_path is None:
        raise FileNotFoundError("no C compiler found (set CC, or install cc/gcc)")
    folder = trusted_folder(cache_dir)
    path = library_path(compiler_path, source, flags, folder, name)
    if not is_recorded_build(path):
        log.info("Building %s into %s", source.name, path)
        build(compiler_path, source, flags, path)
        if not is_recorded_build(path):
            raise OSError(f"{path} does not match the hash recorded when it was built")
    return ctypes.CDLL(str(path)), path


def build(compiler: str, source: Path, flags: Sequence[str], target: Path) -> None:
    """Compile `source` into `target` and record its sha256 beside it, both renamed into place."""
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        partial = Path(work) / target.name
        subprocess.run(
            [compiler, *flags, str(source), "-o", str(partial)],
            check=True,
            capture_output=True,
            timeout=COMPILE_TIMEOUT_S,
        )
        os.chmod(partial, 0o700)
        record = Path(work) / (target.name + RECORD_SUFFIX)
        record.write_text(_sha256(partial) + "\n")
        os.replace(partial, target)
        os.replace(record, record_path(target))


def record_path(library: Path) -> Path:
    return library.with_name(library.name + RECORD_SUFFIX)


def is_recorded_build(path: Path) -> bool:
    """Whether `path` and its hash record are this user's, private, and agree."""
    record = record_path(path)
    try:
        for file in (path, record):
            if _untrusted(file.stat(), file, parent=False):
                return False
        return record.read_text().strip() == _sha256(path)
    except OSError:
        return False


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _untrusted(status: os.stat_result, path: Path, *, parent: bool) -> str | None:
    """Why another user could change what `path` holds (None: no one but us, or root)."""
    owners = (os.getuid(), 0) if parent else (os.getuid(),)
    if status.st_uid not in owners:
        return f"{path} is owned by uid {status.st_uid}"
    sticky = parent and stat.S_ISDIR(status.st_mode) and status.st_mode & stat.S_ISVTX
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky:
        return f"{path} is writable by group or others"
    return None


# Folders refused this process, and the private folder used instead of each.
_private_folders: dict[Path, Path] = {}
_private_lock = threading.Lock()


def trusted_folder(folder: Path) -> Path:
    """`folder` (created 0700 if missing) when only this user can change it, else a private
    folder of this process (removed at exit)."""
    folder = Path(os.path.abspath(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        problem = _untrusted(folder.stat(), folder, parent=False)
        for parent in folder.parents:
            problem = problem or _untrusted(parent.stat(), parent, parent=True)
    except OSError as err:
        problem = f"{folder}: {err}"
    if problem is None:
        return folder
    with _private_lock:
        private = _private_folders.get(folder)
        if private is None:
            private = Path(tempfile.mkdtemp(prefix="headscope-native-"))
            atexit.register(shutil.rmtree, private, ignore_errors=True)
            _private_folders[folder] = private
            log.warning("Not using the native cache folder (%s); building in %s", problem, private)
    return private


def library_path(
    compiler: str, source: Path, flags: Sequence[str], cache_dir: Path, name: str
) -> Path:
    version = subprocess.run(
        [compiler, "--version"], check=True, capture_output=True, timeout=COMPILE_TIMEOUT_S
    ).stdout
    digest = hashlib.sha256()
    for part in (source.read_bytes(), " ".join(flags).encode(), version, cpu_identity().encode()):
        digest.update(part)
        digest.update(b"\0")
    return cache_dir / f"{name}-{digest.hexdigest()[:20]}.so"
