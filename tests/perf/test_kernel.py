"""The fused attention kernel: build and cache, failure modes, and its numbers against torch."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from headscope.errors import StartupError
from headscope.runtime import kernel as kernel_module
from headscope.runtime.kernel import load_attention_kernel, reference_attention

HEADS = 16


def random_problem(batch: int, length: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, length, 3 * HEADS * 4, generator=generator)
    w = torch.randn(HEADS, 4, 64, generator=generator, dtype=torch.float64)
    return qkv, torch.matmul(w, w.transpose(1, 2)).contiguous()


@pytest.mark.parametrize("length", [1, 2, 7, 8, 9, 255, 256, 257, 300])
@pytest.mark.parametrize("window", [0, 256])
def test_kernel_matches_torch(attention_kernel, length, window):
    qkv, gram = random_problem(2, length)
    activity = torch.empty(2, HEADS, length)
    patterns = torch.empty(2, 3, length, length)
    kept = [0, 7, 15]
    z = attention_kernel.attend(qkv, HEADS, window, gram, activity, patterns, kept)
    # Against float64, the truth both float32 paths approximate.
    want_z, _, want_patterns = reference_attention(qkv.double(), HEADS, window, gram)
    _, want_activity, _ = reference_attention(qkv, HEADS, window, gram)
    assert (z.double() - want_z).abs().max().item() <= 1e-5
    assert ((activity - want_activity).abs() / want_activity.clamp(min=1)).max().item() <= 1e-5
    assert (patterns.double() - want_patterns[:, kept]).abs().max().item() <= 1e-5
    hidden = torch.ones(length, length, dtype=torch.bool).triu(1)
    if window:
        hidden |= torch.ones(length, length, dtype=torch.bool).tril(-window)
    assert torch.all(patterns[:, :, hidden] == 0)


def test_threads_split_the_work_without_changing_a_bit(attention_kernel):
    qkv, gram = random_problem(3, 130, seed=1)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            activity = torch.empty(3, HEADS, 130)
            patterns = torch.empty(3, HEADS, 130, 130)
            z = attention_kernel.attend(qkv, HEADS, 0, gram, activity, patterns, list(range(HEADS)))
            results.append((z, activity, patterns))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            assert torch.equal(got, want)


def test_build_is_cached(tmp_path):
    first = load_attention_kernel("c", tmp_path)
    built = first.path.stat().st_mtime_ns
    again = load_attention_kernel("c", tmp_path)
    assert again.path == first.path and again.path.stat().st_mtime_ns == built


def test_a_damaged_cached_build_is_rebuilt(tmp_path):
    # Damaged before this process loads it: a loaded library is never overwritten in place
    # (builds are renamed into place), and dlopen would hand back the loaded copy anyway.
    path = kernel_module._library_path(kernel_module._compiler(), tmp_path)
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


def test_a_kernel_that_disagrees_with_torch_is_never_used(tmp_path, monkeypatch):
    """The self-check at load: a build whose numbers are off must not serve."""
    wrong = tmp_path / "wrong.c"
    source = kernel_module.SOURCE.read_text()
    wrong.write_text(source.replace("row[j] = p;", "row[j] = p * 1.001f;"))
    monkeypatch.setattr(kernel_module, "SOURCE", wrong)
    assert load_attention_kernel("auto", tmp_path) is None
    with pytest.raises(StartupError, match="differs from torch"):
        load_attention_kernel("c", tmp_path)


def test_loading_the_kernel_keeps_subnormal_floats(tmp_path):
    """Built without -ffast-math: loading it must not switch the process to flush-to-zero."""
    script = (
        "import sys, torch\n"
        "from headscope.runtime.kernel import load_attention_kernel\n"
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
