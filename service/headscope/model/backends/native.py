"""The native backend: the forward pass's C kernels (attention_kernel.c), called by ctypes.

The fused attention of 4-dim heads (`attend`), the residual add with the LayerNorm after it
(`add_layer_norm`), the tanh-GELU in place (`gelu_tanh_`), and a whole transformer block in one
call (`block_forward`), whose GEMMs call the BLAS sgemm that torch itself calls (MKL) by address:
the same bits as torch.mm/addmm, without a Python-to-torch round trip per operation. That
address is a symbol inside libtorch, so it is looked up only for the torch versions in
TORCH_SGEMM_VERSIONS and only kept when it agrees with torch.mm at load; otherwise `blocks` is
False and the backend calls the pieces one by one.

The C kernel computes activity its own way, as a quadratic form of z with each head's Gram
matrix W_hW_hᵀ (the norm of z_h·W_h without forming the contribution); its self-check compares
that with headscope.model.activity at load, and the backend declines any other activity formula.

The shared library is built on the machine that runs it, for that CPU (-march=native), and loaded
only as headscope.native.build allows (the hash recorded at build, a private cache folder). Where
no C compiler is found, the build fails or a check disagrees, the engine keeps its torch backend
(same numbers within float32 rounding); the setting `attention_kernel` says whether that is
acceptable ("auto") or an error ("c").

ctypes releases the GIL during the call, so the kernels run beside request handling and, with
more than one torch thread, split their work (attention's (sequence, head) pairs, large
LayerNorm/GELU inputs' rows) over that many threads; every piece is computed the same way
whatever the split, so the numbers are bit-identical for any thread count.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from headscope.errors import StartupError
from headscope.model.activity import ActivityFormula, contribution_norm, head_contributions
from headscope.model.backends.base import (
    ForwardRequest,
    Geometry,
    LayerOutput,
    LayerWeights,
    gelu_tanh_by_sigmoid,
)
from headscope.native import build as native_build

log = logging.getLogger("headscope.kernel")

SOURCE = Path(__file__).parents[2] / "native" / "attention_kernel.c"
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
# LayerNorm/GELU inputs are split over threads only from this many floats per thread: below it,
# handing work to the pool costs more than the arithmetic.
MIN_FLOATS_PER_THREAD = 1 << 16
# (major, minor) range of torch releases whose libtorch_cpu is known to export MKL's Fortran
# `sgemm_` with 32-bit integers, as torch calls it; other versions never look it up.
TORCH_SGEMM_VERSIONS = ((2, 13), (2, 13))
# With several torch threads, one sequence shorter than this runs on one thread, whole blocks at
# a time: splitting each op over threads costs more than it gains on short inputs (break-even
# measured in bench/README.md).
BLOCKS_ALONE_BELOW_TOKENS = 256


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


_SGEMM = ctypes.CFUNCTYPE(
    None,
    *(ctypes.c_char_p,) * 2,
    *(ctypes.POINTER(ctypes.c_int),) * 3,
    ctypes.POINTER(ctypes.c_float),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int),
    ctypes.POINTER(ctypes.c_float),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int),
)


def _torch_sgemm() -> int | None:
    """The address of `sgemm_`, the Fortran BLAS GEMM inside torch, where this torch version is
    in TORCH_SGEMM_VERSIONS, was built with MKL, and the function agrees with torch.mm on a
    small product; None elsewhere."""
    low, high = TORCH_SGEMM_VERSIONS
    if not low <= _torch_version() <= high or not torch.backends.mkl.is_available():
        return None
    for path in sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*")):
        try:
            address = ctypes.cast(ctypes.CDLL(str(path)).sgemm_, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
        if address and _sgemm_agrees_with_torch(address):
            return address
        log.warning("torch's sgemm_ disagrees with torch.mm: whole-block kernel calls are off")
        return None
    return None


def _sgemm_agrees_with_torch(address: int) -> bool:
    """out[rows, n] = x[rows, k] · w[n, k]ᵀ through `address`, as attention_kernel.c's linear()
    calls it (column-major: outᵀ = w · xᵀ), against torch.mm."""
    generator = torch.Generator().manual_seed(0)
    rows, k, n = 7, 12, 9
    x, w = torch.randn(rows, k, generator=generator), torch.randn(n, k, generator=generator)
    out = torch.empty(rows, n)

    def integer(value: int) -> ctypes._Pointer:
        return ctypes.pointer(ctypes.c_int(value))

    _SGEMM(address)(
        b"T", b"N", integer(n), integer(rows), integer(k), ctypes.pointer(ctypes.c_float(1.0)),
        w.data_ptr(), integer(k), x.data_ptr(), integer(k), ctypes.pointer(ctypes.c_float(0.0)),
        out.data_ptr(), integer(n),
    )  # fmt: skip
    return torch.allclose(out, torch.mm(x, w.t()), rtol=1e-5, atol=1e-6)


def w_o_gram(w_o_by_head_t: Tensor) -> Tensor:
    """[head, d_head, d_head] float64 W_h·W_hᵀ, W_h = W_O[:, h-slice]ᵀ: the kernel's activity is
    ‖z_h·W_h‖ = √(z_h · (W_h W_hᵀ) · z_h)."""
    w = w_o_by_head_t.double()
    return torch.matmul(w, w.transpose(1, 2)).contiguous()


class _Block(ctypes.Structure):
    """attention_kernel.c's struct headscope_block."""

    _fields_ = [
        *(
            (name, ctypes.c_void_p)
            for name in (
                "ln_1_weight",
                "ln_1_bias",
                "ln_2_weight",
                "ln_2_bias",
                "qkv",
                "out",
                "out_bias",
                "fc",
                "fc_bias",
                "proj",
                "proj_bias",
                "gram",
            )
        ),  # fmt: skip
        ("eps", ctypes.c_double),
        *((name, ctypes.c_long) for name in ("d_model", "d_mlp", "heads", "window")),
    ]


@dataclass(frozen=True)
class BlockWeights:
    """One block's weights as the whole-block call reads them (keeps the tensors alive)."""

    struct: _Block
    tensors: tuple[Tensor, ...]


class AttentionKernel:
    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        c_long, c_double, pointer = ctypes.c_long, ctypes.c_double, ctypes.c_void_p
        self._attend = library.headscope_attend
        self._attend.argtypes = [
            pointer, c_long, c_long, c_long, c_long, c_long, c_long,
            pointer, pointer, pointer, pointer, pointer, c_long,
        ]  # fmt: skip
        self._attend.restype = ctypes.c_int
        self._add_layer_norm = library.headscope_add_layer_norm
        self._add_layer_norm.argtypes = [
            pointer, pointer, c_long, c_long, c_long, pointer, pointer, c_double, pointer,
        ]  # fmt: skip
        self._add_layer_norm.restype = None
        self._gelu_tanh = library.headscope_gelu_tanh
        self._gelu_tanh.argtypes = [pointer, c_long, c_long]
        self._gelu_tanh.restype = None
        self._block_forward = library.headscope_block_forward
        self._block_forward.argtypes = [
            pointer, pointer, c_long, c_long, pointer, pointer, pointer, pointer, pointer,
            pointer, pointer, pointer, pointer, pointer, pointer, c_long, ctypes.c_int,
        ]  # fmt: skip
        self._block_forward.restype = ctypes.c_int
        self._sgemm = _torch_sgemm()
        # Whether block_forward may be used: torch's sgemm was found and the self-check passed.
        self.blocks = False
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

    def _split(self, run: Callable[[int, int], None], count: int, threads: int) -> None:
        """run(first, end) over [0, count), in `threads` contiguous parts on the pool (one part:
        called here, without the pool's hand-offs)."""
        threads = min(threads, count)
        if threads <= 1:
            run(0, count)
            return
        bounds = [count * part // threads for part in range(threads + 1)]
        futures = [
            self._pool(threads).submit(run, first, end)
            for first, end in zip(bounds, bounds[1:], strict=False)
        ]
        for future in futures:
            future.result()

    def check(self, tolerance: float = 1e-5) -> None:
        """Compare with torch, and activity with headscope.model.activity's formula, on small
        random problems (a miscompiled build must not serve)."""
        generator = torch.Generator().manual_seed(0)
        heads, length = 3, 37
        qkv = torch.randn(2, length, 3 * heads * SUPPORTED_D_HEAD, generator=generator)
        # [head, d_head, d_model]: W_O[:, h-slice]ᵀ of an 8-wide model
        w_o_by_head_t = torch.randn(
            heads, SUPPORTED_D_HEAD, 8, generator=generator, dtype=torch.float64
        )
        gram = w_o_gram(w_o_by_head_t)
        for window in (0, 5):
            activity = torch.empty(2, heads, length)
            patterns = torch.empty(2, heads, length, length)
            z = self.attend(qkv, heads, window, gram, activity, patterns, list(range(heads)))
            expected = reference_attention(qkv, heads, window, w_o_by_head_t)
            for got, want in zip((z, activity, patterns), expected, strict=True):
                _expect_close(got, want, tolerance, f"attention (window {window})")

        hidden = torch.randn(2, 11, 64, generator=generator) * 3 + 1
        addend = torch.randn(2, 11, 64, generator=generator)
        gamma, beta = torch.randn(2, 64, generator=generator)
        want_hidden = hidden + addend
        want = torch.nn.functional.layer_norm(want_hidden, (64,), gamma, beta, 1e-5)
        normed = torch.empty_like(hidden)
        self.add_layer_norm(hidden, addend, gamma, beta, 1e-5, normed)
        _expect_close(hidden, want_hidden, 0.0, "the residual add")
        _expect_close(normed, want, tolerance, "layer norm")

        # Both signs, the polynomial's range, the clamp at |x| = 10 and past it, and a length
        # that is not a whole number of vectors.
        x = torch.cat(
            [torch.randn(301, generator=generator) * 4, torch.tensor([-1e4, -10.5, 0.0, 1e4])]
        )
        want = gelu_tanh_reference(x.double())
        self.gelu_tanh_(x)
        _expect_close(x, want, tolerance, "tanh-GELU")

        self.blocks = False
        if self._sgemm is None:
            log.info("No checked sgemm from torch to call: the kernels are called one by one")
            return
        try:
            self._check_block(generator, tolerance)
        except KernelMismatch as err:
            # The pieces passed; only the sgemm hand-over is in doubt: run without it.
            log.warning("Whole-block kernel calls are off: %s", err)
            return
        self.blocks = True

    def _check_block(self, generator: torch.Generator, tolerance: float) -> None:
        """One small block, two sequences, against the same steps in torch ops."""
        batch, length, heads, d_mlp, window, eps = 2, 19, 3, 20, 5, 1e-5
        d_model = heads * SUPPORTED_D_HEAD

        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator) * 0.5

        weights = [randn(d_model) + 1, randn(d_model), randn(d_model) + 1, randn(d_model)]
        weights += [randn(3 * d_model, d_model), randn(d_model, d_model), randn(d_model)]
        weights += [randn(d_mlp, d_model), randn(d_mlp), randn(d_model, d_mlp), randn(d_model)]
        ln_1w, ln_1b, ln_2w, ln_2b, w_qkv, w_o, b_o, w_fc, b_fc, w_proj, b_proj = weights
        w_o_by_head_t = w_o.view(d_model, heads, SUPPORTED_D_HEAD).permute(1, 2, 0)
        gram = w_o_gram(w_o_by_head_t)
        block = self.block_weights(
            (ln_1w, ln_1b, eps), (ln_2w, ln_2b, eps), w_qkv, w_o, b_o, w_fc, b_fc, w_proj, b_proj,
            gram, heads, window,
        )  # fmt: skip
        hidden, pending = randn(batch, length, d_model) * 4, randn(batch, length, d_model)

        layer_norm = torch.nn.functional.layer_norm
        want_hidden = hidden + pending
        normed = layer_norm(want_hidden, (d_model,), ln_1w, ln_1b, eps)
        want_z, want_activity, _ = reference_attention(
            normed @ w_qkv.T, heads, window, w_o_by_head_t
        )
        want_output = want_z @ w_o.T + b_o
        want_hidden = want_hidden + want_output
        normed = layer_norm(want_hidden, (d_model,), ln_2w, ln_2b, eps)
        want_mlp = gelu_tanh_reference(normed @ w_fc.T + b_fc) @ w_proj.T + b_proj

        rows = batch * length
        buffers = [torch.empty(rows, width) for width in (d_model, 3 * d_model, d_model)]
        buffers += [torch.empty(rows, width) for width in (d_model, d_mlp, d_model)]
        normed, qkv, z, output, inner, mlp = buffers
        activity = torch.empty(batch, heads, length)
        self.block_forward(
            block, batch, length, hidden, pending, normed, qkv, z, output, inner, mlp, activity,
            None, [], last=False,
        )  # fmt: skip
        for got, want, what in (
            (hidden.view(rows, d_model), want_hidden.view(rows, d_model), "the residual stream"),
            (activity, want_activity, "activity"),
            (output, want_output.view(rows, d_model), "the attention output"),
            (mlp, want_mlp.view(rows, d_model), "the MLP output"),
        ):
            _expect_close(got, want, tolerance, f"a whole block's {what}")

    def attend(
        self,
        qkv: Tensor,  # [batch, token, 3 * head * 4], contiguous float32
        heads: int,
        window: int,  # 0: global attention
        gram: Tensor,  # [head, 4, 4] float64: w_o_gram of W_O by head
        activity: Tensor,  # [batch, head, token], to fill in
        patterns: Tensor | None,  # [batch, len(pattern_heads), token, token], to fill in
        pattern_heads: list[int],
    ) -> Tensor:
        """Fill `activity` (and `patterns`); return z as [batch, token, head * 4]."""
        batch, length, _ = qkv.shape
        for tensor in (qkv, gram, activity, patterns):
            assert tensor is None or tensor.is_contiguous()
        z = torch.empty(batch, length, heads * SUPPORTED_D_HEAD)
        slots = None
        if pattern_heads:
            slots = (ctypes.c_long * heads)(*([-1] * heads))
            for slot, head in enumerate(pattern_heads):
                slots[head] = slot
        arguments = (
            gram.data_ptr(),
            z.data_ptr(),
            activity.data_ptr(),
            patterns.data_ptr() if patterns is not None else None,
            slots,
            len(pattern_heads),
        )
        qkv_pointer, pairs = qkv.data_ptr(), batch * heads

        def run(first: int, end: int) -> None:
            status = self._attend(qkv_pointer, batch, length, heads, window, first, end, *arguments)
            if status != 0:
                raise MemoryError("attention kernel: no memory for its scratch rows")

        self._split(run, pairs, torch.get_num_threads())
        return z

    def add_layer_norm(
        self,
        hidden: Tensor,  # [..., width], contiguous float32: the residual stream, updated in place
        addend: Tensor | None,  # like hidden, or None: nothing to add
        weight: Tensor,  # [width]
        bias: Tensor,  # [width]
        eps: float,
        out: Tensor,  # like hidden, to fill in with LayerNorm(hidden + addend)
    ) -> None:
        """hidden += addend (when given), then out = F.layer_norm(hidden, ...) within float32
        rounding."""
        for tensor in (hidden, addend, weight, bias, out):
            assert tensor is None or (tensor.is_contiguous() and tensor.dtype == torch.float32)
        assert out.shape == hidden.shape and (addend is None or addend.shape == hidden.shape)
        width = hidden.shape[-1]
        rows = hidden.numel() // width
        hidden_pointer, out_pointer = hidden.data_ptr(), out.data_ptr()
        addend_pointer = addend.data_ptr() if addend is not None else None
        weight_pointer, bias_pointer = weight.data_ptr(), bias.data_ptr()

        def run(first: int, end: int) -> None:
            self._add_layer_norm(
                hidden_pointer, addend_pointer, first, end, width,
                weight_pointer, bias_pointer, eps, out_pointer,
            )  # fmt: skip

        self._split(run, rows, self._threads_for(rows * width))

    def gelu_tanh_(self, x: Tensor) -> Tensor:
        """x <- GPT-2's tanh-GELU of x, in place (contiguous float32); returns x."""
        assert x.is_contiguous() and x.dtype == torch.float32
        pointer, count = x.data_ptr(), x.numel()

        def run(first: int, end: int) -> None:
            # Each value goes through the same vector code wherever a part starts: the same
            # bits for any thread count.
            self._gelu_tanh(pointer, first, end)

        self._split(run, count, self._threads_for(count))
        return x

    def block_weights(
        self,
        ln_1: tuple[Tensor, Tensor, float],  # weight, bias, eps
        ln_2: tuple[Tensor, Tensor, float],
        w_qkv: Tensor,  # [3 * d_model, d_model]
        w_o: Tensor,  # [d_model, d_model]
        b_o: Tensor,
        w_fc: Tensor,  # [d_mlp, d_model]
        b_fc: Tensor,
        w_proj: Tensor,  # [d_model, d_mlp]
        b_proj: Tensor,
        gram: Tensor,  # [head, 4, 4] float64, as for attend
        heads: int,
        window: int,  # 0: global attention
    ) -> BlockWeights:
        """A block's weights for block_forward (all contiguous, float32 but the Gram matrices)."""
        tensors = (*ln_1[:2], *ln_2[:2], w_qkv, w_o, b_o, w_fc, b_fc, w_proj, b_proj, gram)
        for tensor in tensors:
            assert tensor.is_contiguous()
            assert tensor.dtype == (torch.float64 if tensor is gram else torch.float32)
        struct = _Block(
            *(tensor.data_ptr() for tensor in tensors),
            ln_1[2], w_qkv.shape[1], w_fc.shape[0], heads, window,
        )  # fmt: skip
        return BlockWeights(struct, tensors)

    def block_forward(
        self,
        block: BlockWeights,
        batch: int,
        length: int,
        hidden: Tensor,  # [batch, token, d_model]: the residual stream, updated in place
        pending: Tensor | None,  # like hidden: the previous block's MLP output, still to add
        normed: Tensor,  # [rows, d_model] scratch; rows = batch * token
        qkv: Tensor,  # [rows, 3 * d_model], written
        z: Tensor,  # [rows, d_model] (= [batch, token, head * 4]), written
        attention_output: Tensor,  # [rows, d_model], written (out_proj bias included)
        inner: Tensor,  # [rows, d_mlp] scratch
        mlp: Tensor,  # [rows, d_model], written (may be `pending` itself)
        activity: Tensor,  # [batch, head, token], written
        patterns: Tensor | None,  # [batch, len(pattern_heads), token, token], written
        pattern_heads: list[int],
        *,
        last: bool,  # stop after the attention output (no residual add, no MLP)
    ) -> None:
        """One GPT-Neo block in one call: add_layer_norm, the QKV GEMM, attend, the output GEMM,
        and unless `last` add_layer_norm, the MLP GEMMs and the tanh-GELU between them."""
        assert self._sgemm is not None  # callers check `blocks`; the self-check runs first
        # C writes through these pointers: every buffer must have exactly its size.
        rows, d_model, heads = batch * length, block.struct.d_model, block.struct.heads
        for tensor, width in (
            (hidden, d_model), (pending, d_model), (normed, d_model), (qkv, 3 * d_model),
            (z, d_model), (attention_output, d_model), (inner, block.struct.d_mlp),
            (mlp, d_model), (activity, heads), (patterns, len(pattern_heads) * length),
        ):  # fmt: skip
            assert tensor is None or (
                tensor.is_contiguous()
                and tensor.dtype == torch.float32
                and tensor.numel() == rows * width
            )
        slots = None
        if pattern_heads:
            slots = (ctypes.c_long * heads)(*([-1] * heads))
            for slot, head in enumerate(pattern_heads):
                slots[head] = slot
        status = self._block_forward(
            self._sgemm, ctypes.byref(block.struct), batch, length, hidden.data_ptr(),
            pending.data_ptr() if pending is not None else None, normed.data_ptr(),
            qkv.data_ptr(), z.data_ptr(), attention_output.data_ptr(), inner.data_ptr(),
            mlp.data_ptr(), activity.data_ptr(),
            patterns.data_ptr() if patterns is not None else None, slots, len(pattern_heads),
            int(last),
        )  # fmt: skip
        if status != 0:
            raise MemoryError("attention kernel: no memory for its scratch rows")

    @staticmethod
    def _threads_for(floats: int) -> int:
        return max(1, min(torch.get_num_threads(), floats // MIN_FLOATS_PER_THREAD))


def _expect_close(got: Tensor, want: Tensor, tolerance: float, what: str) -> None:
    """Absolute difference up to magnitude 1, relative above it."""
    want = want.double()
    difference = ((got.double() - want).abs() / want.abs().clamp(min=1)).max().item()
    if not difference <= tolerance:
        raise KernelMismatch(f"{what} differs from torch by {difference}")


def gelu_tanh_reference(x: Tensor) -> Tensor:
    """GPT-2's tanh-GELU with torch ops: Hugging Face's "gelu_new" 0.5x(1 + tanh(u)), written as
    x·sigmoid(2u), the same function, so that float64 keeps the tiny values of large negative x
    (where 1 + tanh(u) cancels to 0)."""
    return x * torch.sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3)))


class KernelMismatch(RuntimeError):
    """The built kernel disagrees with torch on a small problem: never use it."""


def reference_attention(
    qkv: Tensor, heads: int, window: int, w_o_by_head_t: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """What the kernel computes, with torch ops and activity.py's formula (in float64):
    (z [b, token, head*4], activity [b, head, token], patterns [b, head, q, k])."""
    batch, length, _ = qkv.shape
    query, key, value = qkv.view(batch, length, 3, heads, SUPPORTED_D_HEAD).permute(2, 0, 3, 1, 4)
    offsets = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    visible = (offsets >= 0) & ((offsets < window) if window else True)
    scores = torch.matmul(query, key.transpose(-1, -2)).masked_fill(~visible, float("-inf"))
    patterns = torch.softmax(scores, dim=-1)  # [batch, head, q, k]
    z = torch.matmul(patterns, value)  # [batch, head, token, 4]
    activity = contribution_norm(z.double(), w_o_by_head_t.double())  # [batch, head, token]
    merged = z.transpose(1, 2).reshape(batch, length, heads * SUPPORTED_D_HEAD)
    return merged, activity, patterns


def load_attention_kernel(mode: str, cache_dir: Path | None = None) -> AttentionKernel | None:
    """The kernel, or None to use the torch backend. mode: "auto", "c" (required) or "torch"."""
    if mode == "torch":
        return None

    def checked(library: ctypes.CDLL, path: Path) -> AttentionKernel:
        kernel = AttentionKernel(library, path)
        kernel.check()
        return kernel

    try:
        return native_build.load(
            "attention", SOURCE, FLAGS, checked, cache_dir=cache_dir, required=True
        )
    except native_build.NativeUnavailable as err:
        message = f"The attention kernel is unavailable ({err})"
        if mode == "c":
            raise StartupError(
                f"{message}. Set attention_kernel=auto or torch to run without it."
            ) from err
        log.warning("%s; using the torch path.", message)
        return None


class NativeBackend:
    """Blocks through the C kernels: one C call per block with one torch thread (`blocks`),
    else the kernels one by one between torch GEMMs. Heads of size 4 and activity as
    `contribution_norm` only (the kernel's own formula, checked against it at load)."""

    name = "native"

    def __init__(
        self,
        geometry: Geometry,
        layers: Sequence[LayerWeights],
        activation: Callable[[Tensor], Tensor],
        activity: ActivityFormula,
        kernel: AttentionKernel,
        *,
        whole_blocks: bool = True,
    ) -> None:
        self.geometry = geometry
        self.layers = layers
        self.activity = activity
        self.kernel = kernel
        self.grams = [w_o_gram(weights.w_o_by_head_t) for weights in layers]
        tanh_gelu = activation is gelu_tanh_by_sigmoid
        # The C GELU stands in for the tanh-GELU only; any other activation runs torch's.
        self.activation = kernel.gelu_tanh_ if tanh_gelu else activation
        self.blocks: list[BlockWeights] | None = None
        if whole_blocks and kernel.blocks and tanh_gelu and self.unsupported(None) is None:
            self.blocks = [
                kernel.block_weights(
                    w.ln_1,
                    w.ln_2,
                    w.w_qkv,
                    w.w_o,
                    w.b_o,
                    w.w_fc,
                    w.b_fc,
                    w.w_proj,
                    w.b_proj,
                    gram,
                    geometry.n_heads,
                    geometry.window(layer),
                )
                for layer, (w, gram) in enumerate(zip(layers, self.grams, strict=True))
            ]

    def unsupported(self, request: ForwardRequest | None) -> str | None:
        if self.geometry.d_head != SUPPORTED_D_HEAD:
            return f"d_head={self.geometry.d_head}: the C kernel needs {SUPPORTED_D_HEAD}"
        if self.activity is not contribution_norm:
            return f"the C kernel computes contribution_norm activity, not {self.activity.__name__}"
        if request is not None and request.ablation is not None:
            return "the C kernel computes z inside its attention call: no ablation"
        return None

    def parts(self, batch: int, length: int, request: ForwardRequest) -> int:
        """With several torch threads the per-op calls split each op over them, which costs
        more than it gains on short inputs: then each thread runs whole blocks for its share of
        the batch (activity and all patterns only)."""
        threads = torch.get_num_threads()
        if (
            self.blocks is not None
            and threads > 1
            and not (
                request.patterns
                or request.vectors
                or request.contributions
                or request.z
                or request.final
            )
            and (batch > 1 or length < BLOCKS_ALONE_BELOW_TOKENS)
        ):
            return threads
        return 1

    def start(self, hidden: Tensor, request: ForwardRequest, *, one_thread: bool) -> _NativePass:
        # One C call per block with a single torch thread: that call runs attention's
        # (sequence, head) pairs on one thread, the per-op calls split them over torch's
        # threads. Both run the same operations in the same order.
        one_thread = one_thread or torch.get_num_threads() == 1
        return _NativePass(self, hidden, request, self.blocks if one_thread else None)


class _NativePass:
    """Each residual add is fused into the LayerNorm after it (`hidden` is updated in place; the
    MLP's output waits in `pending` for the next layer's ln_1), the tanh-GELU runs in place, and
    the GEMMs run on [batch * token, features] rows into buffers reused by every layer (except
    those an output keeps views of)."""

    def __init__(
        self,
        backend: NativeBackend,
        hidden: Tensor,
        request: ForwardRequest,
        blocks: list[BlockWeights] | None,
    ) -> None:
        g = backend.geometry
        self.backend, self.request, self.blocks = backend, request, blocks
        self.hidden = hidden  # [batch, token, d_model]
        batch, length, _ = hidden.shape
        self.rows = rows = batch * length
        self.normed = torch.empty_like(hidden)
        self.normed_rows = self.normed.view(rows, g.d_model)
        self.inner = torch.empty(rows, backend.layers[0].w_fc.shape[0])  # [rows, d_mlp]
        self.mlp = torch.empty_like(hidden)
        self.mlp_rows = self.mlp.view(rows, g.d_model)
        self.pending: Tensor | None = None
        self.shared_qkv = None if request.vectors else torch.empty(rows, 3 * g.d_model)
        self.shared_z = None if request.contributions or request.z else torch.empty(rows, g.d_model)
        self.shared_output = None if request.contributions else torch.empty(rows, g.d_model)

    def block(
        self,
        layer: int,
        activity: Tensor,
        patterns: Tensor | None,
        pattern_heads: list[int],
        *,
        last: bool,
    ) -> LayerOutput:
        backend, request = self.backend, self.request
        g, weights, kernel = backend.geometry, backend.layers[layer], backend.kernel
        batch, length, _ = self.hidden.shape
        rows = self.rows
        if self.blocks is not None:
            qkv = torch.empty(rows, 3 * g.d_model) if self.shared_qkv is None else self.shared_qkv
            merged = torch.empty(rows, g.d_model) if self.shared_z is None else self.shared_z
            attention_output = (
                torch.empty(rows, g.d_model) if self.shared_output is None else self.shared_output
            )
            kernel.block_forward(
                self.blocks[layer], batch, length, self.hidden, self.pending, self.normed_rows,
                qkv, merged, attention_output, self.inner, self.mlp_rows, activity, patterns,
                pattern_heads, last=last,
            )  # fmt: skip
            self.pending = self.mlp
        else:
            kernel.add_layer_norm(self.hidden, self.pending, *weights.ln_1, out=self.normed)
            qkv = torch.mm(self.normed_rows, weights.w_qkv_t, out=self.shared_qkv)
            merged = kernel.attend(
                qkv.view(batch, length, -1), g.n_heads, g.window(layer), backend.grams[layer],
                activity, patterns, pattern_heads,
            ).view(rows, g.d_model)  # fmt: skip  # [batch * token, head * d_head]
            attention_output = torch.addmm(
                weights.b_o, merged, weights.w_o_t, out=self.shared_output
            )
        attention_output = attention_output.view(batch, length, g.d_model)

        output = LayerOutput()
        if request.vectors:
            query, key, value = qkv.view(batch, length, 3, g.n_heads, g.d_head).permute(
                2, 0, 3, 1, 4
            )  # each [batch, head, token, d_head]
            output.query, output.key, output.value = query, key, value
        if request.contributions or request.z:
            z = merged.view(batch, length, g.n_heads, g.d_head).transpose(1, 2)
            if request.contributions:
                output.contribution = head_contributions(z, weights.w_o_by_head_t)
                output.attention_output = attention_output
            if request.z:
                output.z = z
        if not last and self.blocks is None:  # a whole-block call has done the MLP already
            kernel.add_layer_norm(self.hidden, attention_output, *weights.ln_2, out=self.normed)
            torch.addmm(weights.b_fc, self.normed_rows, weights.w_fc_t, out=self.inner)
            torch.addmm(
                weights.b_proj, backend.activation(self.inner), weights.w_proj_t, out=self.mlp_rows
            )
            self.pending = self.mlp
        return output

    def residual(self) -> Tensor:
        # The last MLP output still waits in `pending` for the next ln_1's fused add; `hidden`
        # is updated in place, so the sum is a new tensor either way.
        return self.hidden + self.pending if self.pending is not None else self.hidden.clone()
