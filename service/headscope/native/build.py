"""Compiling headscope's C sources on the serving machine, once, into a cache (torch-free).

A library is stored under a hash of its source, flags, compiler version and CPU, so a changed
source, compiler or machine builds anew, and it is built in a temporary file and renamed into
place, so a concurrent start or a killed build never leaves half a library under the final name.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("headscope.native")

COMPILE_TIMEOUT_S = 60


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


def build(compiler: str, source: Path, flags: Sequence[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        partial = Path(work) / target.name
        subprocess.run(
            [compiler, *flags, str(source), "-o", str(partial)],
            check=True,
            capture_output=True,
            timeout=COMPILE_TIMEOUT_S,
        )
        os.replace(partial, target)


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


def load_library(
    source: Path, flags: Sequence[str], cache_dir: Path | None, name: str
) -> tuple[ctypes.CDLL, Path]:
    """The library built from `source`, from the cache or compiled into it now, and its path.

    Raises FileNotFoundError without a C compiler, OSError or SubprocessError if it cannot be
    built or loaded."""
    compiler_path = compiler()
    if compiler_path is None:
        raise FileNotFoundError("no C compiler found (set CC, or install cc/gcc)")
    path = library_path(compiler_path, source, flags, cache_dir or default_cache_dir(), name)
    if not path.is_file():
        log.info("Building %s into %s", source.name, path)
        build(compiler_path, source, flags, path)
    try:
        return ctypes.CDLL(str(path)), path
    except OSError:
        # A cached build that no longer loads (truncated, damaged) is rebuilt once.
        build(compiler_path, source, flags, path)
        return ctypes.CDLL(str(path)), path
