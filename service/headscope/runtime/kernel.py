"""The fused attention kernel (attention_kernel.c): compiled on first use, cached, called by ctypes.

The shared library is built on the machine that runs it, for that CPU (-march=native), and kept
in a cache folder under a name that hashes the source, the flags, the compiler and the CPU, so a
changed kernel or a different machine never loads a stale build. Where no C compiler is found or
the build fails, the engine keeps its torch path (same numbers within float32 rounding); the
setting `attention_kernel` says whether that is acceptable ("auto") or an error ("c").

ctypes releases the GIL during the call, so the kernel runs beside request handling and, with
more than one torch thread, splits its (sequence, head) pairs over that many threads.
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
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from headscope.errors import StartupError

log = logging.getLogger("headscope.kernel")

SOURCE = Path(__file__).with_name("attention_kernel.c")
SUPPORTED_D_HEAD = 4
# No -ffast-math: with -shared, GCC 12 links crtfastmath.o, which turns on flush-to-zero for the
# whole process (torch included). These flags allow only what the loops need to vectorize.
FLAGS = (
    "-O3",
    "-march=native",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-ffinite-math-only",
    "-fPIC",
    "-shared",
)
COMPILE_TIMEOUT_S = 60


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headscope" / "kernels"


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = [
                line for line in cpuinfo if line.startswith(("model name", "flags", "Features"))
            ]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: a concurrent start or a killed build never
    # leaves a half-written library under the final name.
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        partial = Path(work) / target.name
        subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(partial)],
            check=True,
            capture_output=True,
            timeout=COMPILE_TIMEOUT_S,
        )
        os.replace(partial, target)


def _library_path(compiler: str, cache_dir: Path) -> Path:
    version = subprocess.run(
        [compiler, "--version"], check=True, capture_output=True, timeout=COMPILE_TIMEOUT_S
    ).stdout
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), version, _cpu_identity().encode()):
        digest.update(part)
        digest.update(b"\0")
    return cache_dir / f"attention-{digest.hexdigest()[:20]}.so"


class AttentionKernel:
    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self._attend = library.headscope_attend
        c_long, pointer = ctypes.c_long, ctypes.c_void_p
        self._attend.argtypes = [
            pointer, c_long, c_long, c_long, c_long, c_long, c_long,
            pointer, pointer, pointer, pointer, pointer, c_long,
        ]  # fmt: skip
        self._attend.restype = ctypes.c_int
        self._pools: dict[int, ThreadPoolExecutor] = {}
        self._pools_lock = threading.Lock()

    def _pool(self, threads: int) -> ThreadPoolExecutor:
        # One pool per thread count (torch's count is process-wide and rarely changes); pools are
        # never shut down while another analysis may still submit to them.
        with self._pools_lock:
            if threads not in self._pools:
                self._pools[threads] = ThreadPoolExecutor(
                    threads, thread_name_prefix="headscope-kernel"
                )
            return self._pools[threads]

    def check(self, tolerance: float = 1e-5) -> None:
        """Compare with torch on a small random problem (a miscompiled build must not serve)."""
        generator = torch.Generator().manual_seed(0)
        heads, length = 3, 37
        qkv = torch.randn(2, length, 3 * heads * SUPPORTED_D_HEAD, generator=generator)
        w = torch.randn(heads, SUPPORTED_D_HEAD, 8, generator=generator, dtype=torch.float64)
        gram = torch.matmul(w, w.transpose(1, 2)).contiguous()
        for window in (0, 5):
            activity = torch.empty(2, heads, length)
            patterns = torch.empty(2, heads, length, length)
            z = self.attend(qkv, heads, window, gram, activity, patterns, list(range(heads)))
            expected = reference_attention(qkv, heads, window, gram)
            for got, want in zip((z, activity, patterns), expected, strict=True):
                difference = (got - want).abs().max().item()
                if not difference <= tolerance:
                    raise KernelMismatch(f"differs from torch by {difference} (window {window})")

    def attend(
        self,
        qkv: Tensor,  # [batch, token, 3 * head * 4], contiguous float32
        heads: int,
        window: int,  # 0: global attention
        gram: Tensor,  # [head, 4, 4] float64: W_O[h-slice]ᵀ · W_O[h-slice]
        activity: Tensor,  # [batch, head, token], to fill in
        patterns: Tensor | None,  # [batch, len(pattern_heads), token, token], to fill in
        pattern_heads: list[int],
    ) -> Tensor:
        """Fill `activity` (and `patterns`); return z as [batch, token, head * 4]."""
        batch, length, _ = qkv.shape
        for tensor in (qkv, gram, activity, patterns):
            assert tensor is None or tensor.is_contiguous()
        z = torch.empty(batch, length, heads * SUPPORTED_D_HEAD)
        slots = (ctypes.c_long * heads)(*([-1] * heads))
        for slot, head in enumerate(pattern_heads):
            slots[head] = slot

        def run(first: int, end: int) -> None:
            status = self._attend(
                qkv.data_ptr(), batch, length, heads, window, first, end,
                gram.data_ptr(), z.data_ptr(), activity.data_ptr(),
                patterns.data_ptr() if patterns is not None else None,
                slots, len(pattern_heads),
            )  # fmt: skip
            if status != 0:
                raise MemoryError("attention kernel: no memory for its scratch rows")

        pairs = batch * heads
        threads = min(torch.get_num_threads(), pairs)
        if threads <= 1:
            run(0, pairs)
        else:
            bounds = [pairs * part // threads for part in range(threads + 1)]
            futures = [
                self._pool(threads).submit(run, first, end)
                for first, end in zip(bounds, bounds[1:], strict=False)
            ]
            for future in futures:
                future.result()
        return z


class KernelMismatch(RuntimeError):
    """The built kernel disagrees with torch on a small problem: never use it."""


def reference_attention(
    qkv: Tensor, heads: int, window: int, gram: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """What the kernel computes, with torch ops: (z [b, token, head*4], activity, patterns)."""
    batch, length, _ = qkv.shape
    query, key, value = qkv.view(batch, length, 3, heads, SUPPORTED_D_HEAD).permute(2, 0, 3, 1, 4)
    offsets = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    visible = (offsets >= 0) & ((offsets < window) if window else True)
    scores = torch.matmul(query, key.transpose(-1, -2)).masked_fill(~visible, float("-inf"))
    patterns = torch.softmax(scores, dim=-1)  # [batch, head, q, k]
    z = torch.matmul(patterns, value)  # [batch, head, token, 4]
    squared = torch.einsum("bhti,hij,bhtj->bht", z.double(), gram, z.double())
    merged = z.transpose(1, 2).reshape(batch, length, heads * SUPPORTED_D_HEAD)
    return merged, squared.clamp(min=0).sqrt().float(), patterns


def load_attention_kernel(mode: str, cache_dir: Path | None = None) -> AttentionKernel | None:
    """The kernel, or None to use the torch path. mode: "auto", "c" (required) or "torch"."""
    if mode == "torch":
        return None
    cache_dir = cache_dir or default_cache_dir()
    try:
        compiler = _compiler()
        if compiler is None:
            raise FileNotFoundError("no C compiler found (set CC, or install cc/gcc)")
        path = _library_path(compiler, cache_dir)
        if not path.is_file():
            log.info("Building the attention kernel into %s", path)
            _build(compiler, path)
        try:
            library = ctypes.CDLL(str(path))
        except OSError:
            # A cached build that no longer loads (truncated, damaged) is rebuilt once.
            _build(compiler, path)
            library = ctypes.CDLL(str(path))
        kernel = AttentionKernel(library, path)
        kernel.check()
        return kernel
    except (OSError, subprocess.SubprocessError, KernelMismatch) as err:
        detail = (getattr(err, "stderr", None) or b"").decode(errors="replace")[-500:]
        message = f"The attention kernel is unavailable ({type(err).__name__}: {err}) {detail}"
        if mode == "c":
            raise StartupError(
                f"{message}. Set attention_kernel=auto or torch to run without it."
            ) from err
        log.warning("%s; using the torch path.", message)
        return None
