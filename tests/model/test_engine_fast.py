"""The fast engine path against the plain (op-by-op) path: same numbers for every output."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from headscope.model.engine import AnalysisEngine

# Float32 summation order differs between the paths (fused QKV, mask inside the GEMM, blocks of
# query rows, the fused GELU); everything else is the same arithmetic.
TOLERANCE = 1e-5
FIELDS = ("activity", "all_patterns", "keys", "queries", "values", "contributions")


PATHS = ("blocks", "kernel", "torch")


@pytest.fixture(
    params=[(model, path) for model in ("standin", "random") for path in PATHS], ids="-".join
)
def engine(request, runtime, random_runtime, attention_kernel):
    """The session's engines: one C call per block, the C kernels called one by one, and the
    torch path."""
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
    return engine


@pytest.mark.parametrize("length", [1, 57, 128, 192, 193, 300, 512])
def test_fast_path_equals_plain_path(engine, corpus_ids, length):
    input_ids = torch.tensor([corpus_ids[:length]])
    options = dict(all_patterns=True, vectors=True, contributions=True, patterns=[(1, 2), (6, 15)])
    fast = engine.run(input_ids, **options)
    plain = engine.run(input_ids, plain=True, **options)
    for name in FIELDS:
        difference = (getattr(fast, name) - getattr(plain, name)).abs().max().item()
        assert difference <= TOLERANCE, f"{name} differs by {difference} at {length} tokens"
    # Attention outputs: the fast path uses out_proj on the merged heads, the plain path sums
    # per-head contributions; both add the same bias.
    outputs = (fast.attention_outputs - plain.attention_outputs).abs().max().item()
    assert outputs <= TOLERANCE
    for head in ((1, 2), (6, 15)):
        assert (fast.patterns[head] - plain.patterns[head]).abs().max().item() <= TOLERANCE
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


def test_fast_path_equals_plain_path_for_a_batch(engine, corpus_ids):
    """Several sequences at once: the kernels' rows and (sequence, head) pairs span the batch."""
    input_ids = torch.tensor([corpus_ids[start : start + 150] for start in (0, 400, 900)])
    options = dict(all_patterns=True, vectors=True, contributions=True, patterns=[(3, 5)])
    fast = engine.run(input_ids, **options)
    plain = engine.run(input_ids, plain=True, **options)
    for name in (*FIELDS, "attention_outputs"):
        difference = (getattr(fast, name) - getattr(plain, name)).abs().max().item()
        assert difference <= TOLERANCE, f"{name} differs by {difference}"


@pytest.mark.parametrize("activation", ["relu", "gelu_pytorch_tanh"])
def test_other_activations_keep_the_kernel_paths_numbers(
    random_runtime, attention_kernel, corpus_ids, activation
):
    """The C GELU stands in only for the tanh-GELU; any other activation runs torch's between
    the kernel's LayerNorms, and still matches the plain path."""
    source = random_runtime.engine
    config = dataclasses.replace(source.config, activation_function=activation)
    engine = AnalysisEngine(config, source.tensors)
    engine.use_kernel(attention_kernel)
    input_ids = torch.tensor([corpus_ids[:100]])
    fast = engine.run(input_ids, contributions=True)
    plain = engine.run(input_ids, plain=True, contributions=True)
    for name in ("activity", "contributions", "attention_outputs"):
        assert (getattr(fast, name) - getattr(plain, name)).abs().max().item() <= TOLERANCE


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
        split = engine._whole_blocks_per_thread(
            input_ids, patterns=set(), vectors=False, contributions=False
        )
        two, bare_two = engine.run(input_ids, all_patterns=True), engine.run(input_ids)
        # A long single sequence, or anything beyond activity and all patterns: ops over threads.
        assert not engine._whole_blocks_per_thread(
            torch.zeros(1, 300, dtype=torch.long),
            patterns=set(),
            vectors=False,
            contributions=False,
        )
        assert not engine._whole_blocks_per_thread(
            input_ids, patterns={(1, 2)}, vectors=False, contributions=False
        )
    finally:
        torch.set_num_threads(previous)
    assert split
    assert torch.equal(one.activity, two.activity)
    assert torch.equal(one.all_patterns, two.all_patterns)
    assert torch.equal(bare_one.activity, bare_two.activity)
    plain = engine.run(input_ids, plain=True, all_patterns=True)
    assert (two.activity - plain.activity).abs().max().item() <= TOLERANCE
    assert (two.all_patterns - plain.all_patterns).abs().max().item() <= TOLERANCE
