"""The engine against Hugging Face's own forward pass: patterns vs output_attentions, summed
contributions + out_proj bias vs the attention block's output, and activity vs a direct norm,
for each of the three backends (native, torch, reference)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoModel

from tests.helpers import CORPUS

TOLERANCE = 1e-5
BACKENDS = ("native", "torch", "reference")


def long_text(tokenizer, min_tokens: int = 300) -> torch.Tensor:
    """A real TinyStories text longer than the 256-token local window."""
    text = CORPUS.read_text()[:6000]
    ids = tokenizer(text).input_ids[:min_tokens]
    assert len(ids) == min_tokens
    return torch.tensor([ids])


def hf_reference(model_dir, input_ids):
    """Attention patterns and attention-block outputs from an independent HF model instance."""
    model = GPTNeoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    block_outputs = {}
    hooks = [
        block.attn.register_forward_hook(
            lambda _module, _inputs, output, layer=layer: block_outputs.__setitem__(
                layer, output[0]
            )
        )
        for layer, block in enumerate(model.h)
    ]
    with torch.no_grad():
        result = model(input_ids, output_attentions=True)
    for hook in hooks:
        hook.remove()
    return result.attentions, block_outputs


@pytest.fixture(scope="module", params=["standin", "random"])
def model_case(request, runtime, random_runtime, standin_dir, random_model_dir):
    """(runtime, input ids, HF's attentions, HF's attention-block outputs), HF run once."""
    if request.param == "standin":
        runtime, model_dir = runtime, standin_dir
    else:
        runtime, model_dir = random_runtime, random_model_dir
    input_ids = long_text(runtime.tokenizer)
    return runtime, input_ids, *hf_reference(model_dir, input_ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_patterns_and_block_outputs_match_hf(model_case, backend):
    runtime, input_ids, attentions, block_outputs = model_case
    assert backend in [attached.name for attached in runtime.engine.backends]
    output = runtime.engine.run(input_ids, all_patterns=True, contributions=True, backend=backend)
    for layer in range(runtime.geometry.n_layers):
        pattern_diff = (output.all_patterns[:, layer] - attentions[layer]).abs().max().item()
        block_diff = (output.attention_outputs[:, layer] - block_outputs[layer]).abs().max().item()
        assert pattern_diff <= TOLERANCE, f"layer {layer} pattern differs by {pattern_diff}"
        assert block_diff <= TOLERANCE, f"layer {layer} attention output differs by {block_diff}"


def test_local_layers_see_only_the_window(runtime):
    input_ids = long_text(runtime.tokenizer)
    patterns = runtime.engine.run(input_ids, all_patterns=True).all_patterns[0]  # [l, h, q, k]
    window = runtime.geometry.window_size
    last_query = input_ids.shape[1] - 1
    for layer, kind in enumerate(runtime.geometry.attention_layers):
        beyond_window = patterns[layer, :, last_query, : last_query - window + 1]
        if kind == "local":
            assert beyond_window.abs().max().item() == 0.0
        else:
            assert beyond_window.sum().item() > 0.0
    upper = torch.triu(torch.ones_like(patterns[0, 0], dtype=torch.bool), diagonal=1)
    assert patterns[:, :, upper].abs().max().item() == 0.0  # causal everywhere


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_are_not_scaled_by_sqrt_d_head(runtime, backend):
    """Recompute one head's pattern from the engine's own q and k without scaling: it must
    match; with 1/sqrt(d) scaling it must not."""
    input_ids = long_text(runtime.tokenizer, 40)
    output = runtime.engine.run(input_ids, all_patterns=True, vectors=True, backend=backend)
    layer, head = 2, 0
    query = output.queries[0, layer, head]
    key = output.keys[0, layer, head]
    scores = query @ key.T
    mask = torch.tril(torch.ones_like(scores, dtype=torch.bool))
    unscaled = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    scaled = torch.softmax((scores / 2.0).masked_fill(~mask, float("-inf")), dim=-1)
    engine_pattern = output.all_patterns[0, layer, head]
    assert (engine_pattern - unscaled).abs().max().item() <= TOLERANCE
    assert (engine_pattern - scaled).abs().max().item() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_activity_is_norm_of_head_contribution(runtime, standin_dir, backend):
    """Activity from an independent route: z from HF's value projection and HF's pattern, times
    the head's raw W_O slice, normed."""
    input_ids = long_text(runtime.tokenizer, 64)
    model = GPTNeoModel.from_pretrained(standin_dir, attn_implementation="eager").eval()
    g = runtime.geometry
    layer = 5
    captured = {}
    hook = model.h[layer].ln_1.register_forward_hook(
        lambda _m, _i, output: captured.__setitem__("normed", output)
    )
    with torch.no_grad():
        result = model(input_ids, output_attentions=True)
    hook.remove()
    attention = model.h[layer].attn.attention
    values = attention.v_proj(captured["normed"]).view(1, -1, g.n_heads, g.d_head)
    output = runtime.engine.run(input_ids, last_layer=layer, backend=backend)
    for head in range(g.n_heads):
        z = result.attentions[layer][0, head] @ values[0, :, head]  # [token, d_head]
        w_o = attention.out_proj.weight[:, head * g.d_head : (head + 1) * g.d_head]
        expected = (z @ w_o.T).norm(dim=-1)
        got = output.activity[0, layer, head]
        assert (got - expected).abs().max().item() <= TOLERANCE


def test_early_stop_gives_the_same_numbers(runtime):
    input_ids = long_text(runtime.tokenizer, 50)
    full = runtime.engine.run(input_ids, patterns=[(2, 0)])
    early = runtime.engine.run(input_ids, last_layer=2, patterns=[(2, 0)])
    assert early.activity.shape[1] == 3
    assert torch.equal(full.activity[:, :3], early.activity)
    assert torch.equal(full.patterns[(2, 0)], early.patterns[(2, 0)])


def test_right_padded_batch_matches_single_sequences(runtime):
    tokenizer = runtime.tokenizer
    texts = ["Lily saw a big dog.", 'Tom said, "Hello!" and ran to the park with his ball.']
    sequences = [tokenizer(text).input_ids for text in texts]
    length = max(map(len, sequences))
    batch = torch.tensor([ids + [0] * (length - len(ids)) for ids in sequences])
    batched = runtime.engine.run(batch, patterns=[(1, 3)])
    for row, ids in enumerate(sequences):
        alone = runtime.engine.run(torch.tensor([ids]), patterns=[(1, 3)])
        n = len(ids)
        assert torch.allclose(batched.activity[row, :, :, :n], alone.activity[0], atol=TOLERANCE)
        assert torch.allclose(
            batched.patterns[(1, 3)][row, :n, :n], alone.patterns[(1, 3)][0], atol=TOLERANCE
        )
