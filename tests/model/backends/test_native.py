"""The C kernels (attention, residual add + LayerNorm, tanh-GELU): build and cache, failure modes,
and their numbers against torch in float64."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from headscope.errors import StartupError
from headscope.model.backends import native as kernel_module
from headscope.model.backends.native import (
    MIN_FLOATS_PER_THREAD,
    gelu_tanh_reference,
    load_attention_kernel,
    reference_attention,
    w_o_gram,
)
from headscope.native import build as native_build

HEADS = 16


def random_problem(batch: int, length: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, length, 3 * HEADS * 4, generator=generator)
    w_o_by_head_t = torch.randn(HEADS, 4, 64, generator=generator, dtype=torch.float64)
    return qkv, w_o_by_head_t


@pytest.mark.parametrize("length", [1, 2, 7, 8, 9, 255, 256, 257, 300])
@pytest.mark.parametrize("window", [0, 256])
def test_kernel_matches_torch(attention_kernel, length, window):
    qkv, w_o_by_head_t = random_problem(2, length)
    gram = w_o_gram(w_o_by_head_t)
    activity = torch.empty(2, HEADS, length)
    patterns = torch.empty(2, 3, length, length)
    kept = [0, 7, 15]
    z = attention_kernel.attend(qkv, HEADS, window, gram, activity, patterns, kept)
    # Against float64, the truth both float32 paths approximate; activity as activity.py
    # defines it.
    want_z, _, want_patterns = reference_attention(qkv.double(), HEADS, window, w_o_by_head_t)
    _, want_activity, _ = reference_attention(qkv, HEADS, window, w_o_by_head_t)
    assert (z.double() - want_z).abs().max().item() <= 1e-5
    assert ((activity - want_activity).abs() / want_activity.clamp(min=1)).max().item() <= 1e-5
    assert (patterns.double() - want_patterns[:, kept]).abs().max().item() <= 1e-5
    hidden = torch.ones(length, length, dtype=torch.bool).triu(1)
    if window:
        hidden |= torch.ones(length, length, dtype=torch.bool).tril(-window)
    assert torch.all(patterns[:, :, hidden] == 0)


@pytest.mark.parametrize("window", [1, 3, 7, 8, 9, 20])
def test_windows_narrower_than_a_block_of_queries(attention_kernel, window):
    """The kernel takes queries 8 at a time; a window narrower than that hides keys from some
    queries of a block on both sides."""
    length = 45
    qkv, w_o_by_head_t = random_problem(1, length, seed=window)
    gram = w_o_gram(w_o_by_head_t)
    activity = torch.empty(1, HEADS, length)
    patterns = torch.empty(1, HEADS, length, length)
    z = attention_kernel.attend(qkv, HEADS, window, gram, activity, patterns, list(range(HEADS)))
    want_z, _, want_patterns = reference_attention(qkv.double(), HEADS, window, w_o_by_head_t)
    _, want_activity, _ = reference_attention(qkv, HEADS, window, w_o_by_head_t)
    assert (z.double() - want_z).abs().max().item() <= 1e-5
    assert ((activity - want_activity).abs() / want_activity.clamp(min=1)).max().item() <= 1e-5
    assert (patterns.double() - want_patterns).abs().max().item() <= 1e-5
    offsets = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    assert torch.all(patterns[:, :, (offsets < 0) | (offsets >= window)] == 0)


def close_to(got: torch.Tensor, want: torch.Tensor, tolerance: float = 1e-5) -> bool:
    """Within `tolerance` absolutely up to magnitude 1, relatively above it."""
    want = want.double()
    return bool((((got.double() - want).abs() / want.abs().clamp(min=1)) <= tolerance).all())


@pytest.mark.parametrize(
    ("shape", "scale", "offset"),
    [
        ((1, 128, 64), 1.0, 0.0),
        ((2, 37, 64), 20.0, 5.0),
        ((1, 1, 64), 1.0, 0.0),
        ((3, 5, 7), 3.0, 1.0),
        ((2, 9, 100), 0.5, -3.0),
    ],
)
def test_add_layer_norm_matches_torch(attention_kernel, shape, scale, offset):
    generator = torch.Generator().manual_seed(shape[-1])
    hidden = torch.randn(shape, generator=generator) * scale + offset
    addend = torch.randn(shape, generator=generator)
    weight, bias = torch.randn(2, shape[-1], generator=generator)
    eps = 1e-5
    summed = hidden + addend  # float32, as the torch path adds
    want = F.layer_norm(summed.double(), shape[-1:], weight.double(), bias.double(), eps)
    normed = torch.empty(shape)
    attention_kernel.add_layer_norm(hidden, addend, weight, bias, eps, normed)
    assert torch.equal(hidden, summed)  # the residual stream, updated in place, bit for bit
    assert close_to(normed, want)
    # Without an addend: the LayerNorm alone, hidden untouched.
    before = hidden.clone()
    attention_kernel.add_layer_norm(hidden, None, weight, bias, eps, normed)
    assert torch.equal(hidden, before)
    assert close_to(normed, want)
    # And as close to torch's own float32 LayerNorm as float32 rounding allows.
    torch_float32 = F.layer_norm(summed, shape[-1:], weight, bias, eps)
    assert close_to(normed, torch_float32, 2e-6)


def test_gelu_matches_torch_including_extreme_values(attention_kernel):
    generator = torch.Generator().manual_seed(0)
    extremes = [1e4, -1e4, 3e38, -3e38, 0.0, -0.0, 1e-40, -1e-40, 1e-45, -1e-45, 1e-30, -1e-30]
    edges = [10.0, -10.0, 9.999, -9.999, 10.001, -10.001, 5.0, -5.0, 1.0, -1.0]
    x = torch.cat([torch.randn(10_003, generator=generator) * 4, torch.tensor(extremes + edges)])
    want = gelu_tanh_reference(x.double())
    got = attention_kernel.gelu_tanh_(x.clone())
    assert torch.isfinite(got).all()
    assert close_to(got, want)
    # The same function as Hugging Face's "gelu_new" and torch's tanh GELU, in float64.
    hugging_face = (
        0.5
        * x.double()
        * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x.double() + 0.044715 * x.double() ** 3)))
    )
    finite = x.abs() < 1e10  # the float64 formula itself overflows x³ beyond that
    assert close_to(got[finite], hugging_face[finite])
    assert close_to(got[finite], F.gelu(x.double()[finite], approximate="tanh"))
    # Past |x| = 10 it is x itself or nothing; tiny inputs keep their (subnormal) digits.
    assert torch.equal(got[x >= 10], x[x >= 10])
    assert got[x <= -10].abs().max().item() <= 1e-30
    tiny = torch.tensor([1e-40, -1e-40])
    assert torch.equal(attention_kernel.gelu_tanh_(tiny.clone()), tiny * 0.5)


def test_gelu_works_in_place(attention_kernel):
    x = torch.linspace(-3, 3, 21)
    assert attention_kernel.gelu_tanh_(x) is x
    assert close_to(x, gelu_tanh_reference(torch.linspace(-3, 3, 21, dtype=torch.float64)))


def test_threads_split_the_work_without_changing_a_bit(attention_kernel):
    qkv, w_o_by_head_t = random_problem(3, 130, seed=1)
    gram = w_o_gram(w_o_by_head_t)

    def attend() -> tuple[torch.Tensor, ...]:
        activity = torch.empty(3, HEADS, 130)
        patterns = torch.empty(3, HEADS, 130, 130)
        z = attention_kernel.attend(qkv, HEADS, 0, gram, activity, patterns, list(range(HEADS)))
        return z, activity, patterns

    assert_same_bits_at_1_2_and_3_threads(attend)


def assert_same_bits_at_1_2_and_3_threads(compute) -> None:
    """compute() (a tuple of tensors) with torch at 1, 2 and 3 threads: identical bits."""
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(compute())
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            assert torch.equal(got, want)


def test_layer_norm_and_gelu_threads_do_not_change_a_bit(attention_kernel):
    """Inputs large enough to be split over 3 threads, in parts that are not whole vectors."""
    generator = torch.Generator().manual_seed(2)
    rows = 3 * MIN_FLOATS_PER_THREAD // 64 + 5
    hidden = torch.randn(rows, 64, generator=generator)
    addend = torch.randn(rows, 64, generator=generator)
    weight, bias = torch.randn(2, 64, generator=generator)
    x = torch.randn(3 * MIN_FLOATS_PER_THREAD + 13, generator=generator) * 4

    def layer_norm_and_gelu() -> tuple[torch.Tensor, ...]:
        stream, normed = hidden.clone(), torch.empty_like(hidden)
        attention_kernel.add_layer_norm(stream, addend, weight, bias, 1e-5, normed)
        return stream, normed, attention_kernel.gelu_tanh_(x.clone())

    assert_same_bits_at_1_2_and_3_threads(layer_norm_and_gelu)


def test_build_is_cached(tmp_path):
    first = load_attention_kernel("c", tmp_path)
    built = first.path.stat().st_mtime_ns
    again = load_attention_kernel("c", tmp_path)
    assert again.path == first.path and again.path.stat().st_mtime_ns == built


def test_a_damaged_cached_build_is_rebuilt(tmp_path):
    # Damaged before this process loads it: a loaded library is never overwritten in place
    # (builds are renamed into place), and dlopen would hand back the loaded copy anyway.
    path = native_build.library_path(
        native_build.compiler(), kernel_module.SOURCE, kernel_module.FLAGS, tmp_path, "attention"
    )
    path.write_bytes(b"not a shared library")
    kernel = load_attention_kernel("c", tmp_path)
    assert kernel.path == path and path.stat().st_size > 1000


def test_without_a_compiler_auto_falls_back_and_c_refuses(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger="headscope.kernel"):
        assert load_attention_kernel("auto", tmp_path) is None
    assert "using the torch path" in caplog.text
    with pytest.raises(StartupError, match="attention kernel is unavailable"):
        load_attention_kernel("c", tmp_path)
    assert load_attention_kernel("torch", tmp_path) is None


@pytest.mark.parametrize(
    ("right", "wrong"),
    [
        ("= y[d] * inverse;", "= y[d] * inverse * 1.001f;"),
        ("(x[i] * scale + shift) * gamma[i]", "(x[i] * scale + shift) * 1.001f * gamma[i]"),
        ("x[i] += a[i];", "x[i] += a[i] * 1.0000001f;"),
        ("(1.0f + e);", "(1.001f + e);"),
    ],
    ids=["attention", "layer-norm", "residual-add", "gelu"],
)
def test_a_kernel_that_disagrees_with_torch_is_never_used(tmp_path, monkeypatch, right, wrong):
    """The self-check at load: a build whose numbers are off must not serve."""
    source = kernel_module.SOURCE.read_text()
    assert source.count(right) == 1
    miscompiled = tmp_path / "wrong.c"
    miscompiled.write_text(source.replace(right, wrong))
    monkeypatch.setattr(kernel_module, "SOURCE", miscompiled)
    assert load_attention_kernel("auto", tmp_path) is None
    with pytest.raises(StartupError, match="differs from torch"):
        load_attention_kernel("c", tmp_path)


def test_a_whole_block_that_disagrees_with_torch_is_never_used(tmp_path, monkeypatch):
    """The block call's own self-check: its pieces pass, its GEMM hand-over does not."""
    source = kernel_module.SOURCE.read_text()
    assert source.count("beta = 1.0f;") == 1
    miscompiled = tmp_path / "wrong.c"
    miscompiled.write_text(source.replace("beta = 1.0f;", "beta = 0.5f;"))
    monkeypatch.setattr(kernel_module, "SOURCE", miscompiled)
    kernel = load_attention_kernel("c", tmp_path)
    assert kernel is not None and not kernel.blocks


def test_loading_the_kernel_keeps_subnormal_floats(tmp_path):
    """Built without -ffast-math: loading it must not switch the process to flush-to-zero."""
    script = (
        "import sys, torch\n"
        "from headscope.model.backends.native import load_attention_kernel\n"
        f"assert load_attention_kernel('c', __import__('pathlib').Path({str(tmp_path)!r}))\n"
        "tiny = torch.tensor([1e-39]) * torch.tensor([0.5])\n"
        "sys.exit(0 if tiny.item() > 0 else 1)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stderr


def test_runtime_uses_the_kernel_by_default(runtime):
    assert runtime.settings.attention_kernel == "auto"
    assert runtime.engine.kernel is not None
    # Whole blocks in one call wherever torch brings MKL's sgemm (every x86 wheel).
    assert runtime.engine.whole_blocks == torch.backends.mkl.is_available()


def test_without_torchs_sgemm_the_pieces_are_called_one_by_one(tmp_path, monkeypatch, runtime):
    monkeypatch.setattr(kernel_module, "_torch_sgemm", lambda: None)
    kernel = load_attention_kernel("c", tmp_path)
    assert kernel is not None and not kernel.blocks
    engine = runtime.engine
    attached = engine.kernel
    try:
        engine.use_kernel(kernel)
        assert engine.kernel is kernel and not engine.whole_blocks
    finally:
        engine.use_kernel(attached)


def test_a_library_without_the_kernels_symbols_falls_back(tmp_path, monkeypatch, caplog):
    """A library that builds and loads but lacks the functions: no native backend, one log line
    and no traceback ("auto"), or a StartupError naming the missing symbol ("c")."""
    empty = tmp_path / "empty.c"
    empty.write_text("int headscope_nothing(void) { return 0; }\n")
    monkeypatch.setattr(kernel_module, "SOURCE", empty)
    with caplog.at_level(logging.WARNING, logger="headscope"):
        assert load_attention_kernel("auto", tmp_path / "cache") is None
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    assert "headscope_attend" in warnings[0].getMessage()
    with pytest.raises(StartupError, match="headscope_attend"):
        load_attention_kernel("c", tmp_path / "cache")


def test_torchs_sgemm_is_used_only_in_its_version_range(monkeypatch):
    """The symbol inside libtorch is looked up only for the torch versions it was checked on."""
    low, high = kernel_module.TORCH_SGEMM_VERSIONS
    monkeypatch.setattr(kernel_module, "_torch_version", lambda: (high[0], high[1] + 1))
    assert kernel_module._torch_sgemm() is None
    monkeypatch.setattr(kernel_module, "_torch_version", lambda: (low[0], low[1] - 1))
    assert kernel_module._torch_sgemm() is None


def test_an_sgemm_that_disagrees_with_torch_mm_is_not_used(monkeypatch):
    monkeypatch.setattr(kernel_module, "_sgemm_agrees_with_torch", lambda address: False)
    assert kernel_module._torch_sgemm() is None
