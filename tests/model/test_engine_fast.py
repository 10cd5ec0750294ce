"""The fast backends (native, in whole blocks or kernel by kernel, and torch) against the
reference backend (op by op): same numbers for every output."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from headscope.model.activity import contribution_norm
from headscope.model.backends.base import ForwardRequest
from headscope.model.engine import AnalysisEngine

# Float32 summation order differs between the backends (fused QKV, mask inside the GEMM, blocks of
# query rows, the fused GELU); everything else is the same arithmetic.
TOLERANCE = 1e-5
FIELDS = ("activity", "all_patterns", "keys", "queries", "values", "contributions")


PATHS = ("blocks", "kernel", "torch")


@pytest.fixture(
    params=[(model, path) for model in ("standin", "random") for path in PATHS], ids="-".join
)
def engine(request, runtime, random_runtime, attention_kernel):
    """The session's engines: one C call per block, the C kernels called one by one, and the
    torch backend."""
    model, path = request.param
    engine = attached_engine(
        runtime if model == "standin" else random_runtime, attention_kernel, path
    )
    yield engine
    engine.use_kernel(attention_kernel)


def attached_engine(runtime, attention_kernel, path):
    engine = runtime.engine
    engine.use_kernel(attention_kernel if path != "torch" else None, whole_blocks=path == "blocks")
    assert engine.whole_blocks == (path == "blocks")
    assert engine.backends[0].name == ("torch" if path == "torch" else "native")
    return engine


def splits(engine, input_ids, **kept) -> bool:
    """Whether the engine's preferred backend runs this batch in one-thread parts."""
    batch, length = input_ids.shape
    request = ForwardRequest(last_layer=engine.geometry.n_layers - 1, **kept)
    return engine.backends[0].parts(batch, length, request) > 1


@pytest.mark.parametrize("length", [1, 57, 128, 192, 193, 300, 512])
def test_fast_backends_equal_the_reference(engine, corpus_ids, length):
    input_ids = torch.tensor([corpus_ids[:length]])
    options = dict(all_patterns=True, vectors=True, contributions=True, patterns=[(1, 2), (6, 15)])
    fast = engine.run(input_ids, **options)
    reference = engine.run(input_ids, backend="reference", **options)
    for name in FIELDS:
        difference = (getattr(fast, name) - getattr(reference, name)).abs().max().item()
        assert difference <= TOLERANCE, f"{name} differs by {difference} at {length} tokens"
    # Attention outputs: the fast backends use out_proj on the merged heads, the reference sums
    # per-head contributions; both add the same bias.
    outputs = (fast.attention_outputs - reference.attention_outputs).abs().max().item()
    assert outputs <= TOLERANCE
    for head in ((1, 2), (6, 15)):
        assert (fast.patterns[head] - reference.patterns[head]).abs().max().item() <= TOLERANCE
        assert torch.equal(fast.patterns[head], fast.all_patterns[:, head[0], head[1]])


def test_patterns_are_exact_zeros_where_hidden(engine, corpus_ids):
    """Blocks never compute hidden keys; those entries must still be exact zeros."""
    length = 400
    output = engine.run(torch.tensor([corpus_ids[:length]]), all_patterns=True)
    patterns = output.all_patterns[0]  # [layer, head, q, k]
    offsets = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    window = engine.geometry.window_size
    for layer, kind in enumerate(engine.geometry.attention_layers):
        hidden = offsets < 0
        if kind == "local":
            hidden |= offsets >= window
        assert torch.all(patterns[layer][:, hidden] == 0)
        rows = patterns[layer].sum(dim=-1)
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)


def test_activity_is_identical_whatever_else_is_kept(engine, corpus_ids):
    """Asking for patterns must not change activity by even one bit (same arithmetic)."""
    input_ids = torch.tensor([corpus_ids[:300]])
    bare = engine.run(input_ids).activity
    with_some = engine.run(input_ids, patterns=[(0, 3), (5, 9)]).activity
    with_all = engine.run(input_ids, all_patterns=True).activity
    assert torch.equal(bare, with_some)
    assert torch.equal(bare, with_all)


def test_early_stop_matches_full_run(engine, corpus_ids):
    input_ids = torch.tensor([corpus_ids[:200]])
    full = engine.run(input_ids, patterns=[(3, 4)])
    early = engine.run(input_ids, last_layer=3, patterns=[(3, 4)])
    assert early.activity.shape[1] == 4
    assert torch.equal(early.activity, full.activity[:, :4])
    assert torch.equal(early.patterns[(3, 4)], full.patterns[(3, 4)])


def test_subset_patterns_equal_the_all_pattern_run(engine, corpus_ids):
    input_ids = torch.tensor([corpus_ids[:300]])
    subset = engine.run(input_ids, patterns=[(1, 0), (1, 7), (7, 15)])
    everything = engine.run(input_ids, all_patterns=True)
    for layer, head in subset.patterns:
        assert torch.equal(subset.patterns[(layer, head)], everything.all_patterns[:, layer, head])


def test_fast_backends_equal_the_reference_for_a_batch(engine, corpus_ids):
    """Several sequences at once: the kernels' rows and (sequence, head) pairs span the batch."""
    input_ids = torch.tensor([corpus_ids[start : start + 150] for start in (0, 400, 900)])
    options = dict(all_patterns=True, vectors=True, contributions=True, patterns=[(3, 5)])
    fast = engine.run(input_ids, **options)
    reference = engine.run(input_ids, backend="reference", **options)
    for name in (*FIELDS, "attention_outputs"):
        difference = (getattr(fast, name) - getattr(reference, name)).abs().max().item()
        assert difference <= TOLERANCE, f"{name} differs by {difference}"


@pytest.mark.parametrize("activation", ["relu", "gelu_pytorch_tanh"])
def test_other_activations_keep_the_kernel_paths_numbers(
    random_runtime, attention_kernel, corpus_ids, activation
):
    """The C GELU stands in only for the tanh-GELU; any other activation runs torch's between
    the kernel's LayerNorms, and still matches the reference."""
    source = random_runtime.engine
    config = dataclasses.replace(source.config, activation_function=activation)
    engine = AnalysisEngine(config, source.tensors)
    engine.use_kernel(attention_kernel)
    input_ids = torch.tensor([corpus_ids[:100]])
    fast = engine.run(input_ids, contributions=True)
    reference = engine.run(input_ids, backend="reference", contributions=True)
    for name in ("activity", "contributions", "attention_outputs"):
        assert (getattr(fast, name) - getattr(reference, name)).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("threads", [1, 2])
def test_whole_blocks_give_the_per_op_kernel_paths_numbers(
    runtime, attention_kernel, corpus_ids, threads
):
    """One C call per block (1 thread) against the kernels called one by one (1 and 2 threads,
    where the attention's pairs are split): the same GEMMs and kernels in the same order, so the
    same bits with one thread; with two, MKL's threaded GEMMs may round differently."""
    input_ids = torch.tensor([corpus_ids[start : start + 270] for start in (0, 500)])
    options = dict(all_patterns=True, vectors=True, contributions=True, patterns=[(2, 7)])
    whole = attached_engine(runtime, attention_kernel, "blocks").run(input_ids, **options)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        per_op = attached_engine(runtime, attention_kernel, "kernel").run(input_ids, **options)
    finally:
        torch.set_num_threads(previous)
        runtime.engine.use_kernel(attention_kernel)
    for name in (*FIELDS, "attention_outputs"):
        got, want = getattr(whole, name), getattr(per_op, name)
        if threads == 1:
            assert torch.equal(got, want), name
        else:
            assert (got - want).abs().max().item() <= 1e-6, name
    assert torch.equal(whole.patterns[(2, 7)], whole.all_patterns[:, 2, 7])
    # What a request keeps does not change a bit of the rest.
    bare = attached_engine(runtime, attention_kernel, "blocks").run(input_ids)
    assert torch.equal(bare.activity, whole.activity)


@pytest.mark.parametrize(("batch", "length"), [(1, 150), (2, 140), (5, 90), (3, 270)])
def test_several_threads_run_whole_blocks_a_share_of_the_batch_each(
    runtime, attention_kernel, corpus_ids, batch, length
):
    """With 2 torch threads, activity and all-pattern runs of short inputs take the one-thread
    whole-block path, a part of the batch per thread: the same bits as on one thread."""
    input_ids = torch.tensor(
        [corpus_ids[start * 300 : start * 300 + length] for start in range(batch)]
    )
    engine = attached_engine(runtime, attention_kernel, "blocks")
    one, bare_one = engine.run(input_ids, all_patterns=True), engine.run(input_ids)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        split = splits(engine, input_ids, all_patterns=True)
        two, bare_two = engine.run(input_ids, all_patterns=True), engine.run(input_ids)
        # A long single sequence, or anything beyond activity and all patterns: ops over threads.
        assert not splits(engine, torch.zeros(1, 300, dtype=torch.long))
        assert not splits(engine, input_ids, patterns=frozenset({(1, 2)}))
        assert not splits(engine, input_ids, vectors=True)
    finally:
        torch.set_num_threads(previous)
    assert split
    assert torch.equal(one.activity, two.activity)
    assert torch.equal(one.all_patterns, two.all_patterns)
    assert torch.equal(bare_one.activity, bare_two.activity)
    reference = engine.run(input_ids, backend="reference", all_patterns=True)
    assert (two.activity - reference.activity).abs().max().item() <= TOLERANCE
    assert (two.all_patterns - reference.all_patterns).abs().max().item() <= TOLERANCE


def test_another_activity_formula_goes_to_a_python_backend(random_runtime, corpus_ids):
    """The C kernel computes contribution_norm only: an engine whose activity means something
    else answers from the torch backend, with that formula's numbers."""

    def squared_norm(z, w_o_by_head_t, out=None):
        squared = contribution_norm(z, w_o_by_head_t).square()
        return squared if out is None else out.copy_(squared)

    source = random_runtime.engine
    engine = AnalysisEngine(source.config, source.tensors, activity=squared_norm)
    engine.use_kernel(source.kernel)
    request = ForwardRequest(last_layer=engine.geometry.n_layers - 1)
    assert "contribution_norm" in engine.native.unsupported(request)
    assert engine.backend_for(request).name == "torch"
    assert engine.backend_for(request, "native").name == "torch"
    input_ids = torch.tensor([corpus_ids[:80]])
    squared = engine.run(input_ids).activity
    expected = source.run(input_ids, backend="reference").activity.square()
    assert ((squared - expected).abs() / expected.clamp(min=1)).max().item() <= TOLERANCE
    reference = engine.run(input_ids, backend="reference").activity
    assert (squared - reference).abs().max().item() <= TOLERANCE
