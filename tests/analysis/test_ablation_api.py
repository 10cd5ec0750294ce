"""Ablation and head scores through the real app: /v1/ablate against Hugging Face with a forward
pre-hook on out_proj, /v1/corpus/ablation against /v1/ablate per text, /v1/heads/scores against
HF's own attention weights on the documented sequences, and the 422s."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPTNeoForCausalLM

from tests.analysis.test_corpus_api import assert_error
from tests.helpers import STANDIN_DIR

TEXT = 'Tom said, "I like the red ball." Then Mia said, "Me too!" They played.'
TEXTS = [TEXT, "The little cat jumped on the bed. It was happy and purred."]
HEADS = [{"layer": 2, "head": 0}, {"layer": 6, "head": 4}]
TOLERANCE = 1e-5
# A loss is a logsumexp over the whole vocabulary (50,257 float32 exponentials), whose summation
# order differs from HF's cross_entropy: logits are held to TOLERANCE, losses to this.
LOSS_TOLERANCE = 2e-4


@pytest.fixture(scope="module")
def hf_model():
    return GPTNeoForCausalLM.from_pretrained(STANDIN_DIR, attn_implementation="eager").eval()


def hooked_logits(model, ids, heads, values=None) -> torch.Tensor:
    """HF's logits [token, vocab] with each head's slice of out_proj's input replaced."""
    d_head = model.config.hidden_size // model.config.num_heads

    def replace(layer):
        def hook(_module, args):
            z = args[0].clone()
            for ref in heads:
                if ref["layer"] == layer:
                    part = slice(ref["head"] * d_head, (ref["head"] + 1) * d_head)
                    z[..., part] = 0.0 if values is None else values[layer, ref["head"]]
            return (z,)

        return hook

    hooks = [
        block.attn.attention.out_proj.register_forward_pre_hook(replace(layer))
        for layer, block in enumerate(model.transformer.h)
    ]
    try:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0]
    finally:
        for hook in hooks:
            hook.remove()


def check_against_hf(body, ids, before, after) -> None:
    predictions = body["predictions"]
    assert len(predictions) == len(ids) - 1
    targets = torch.tensor(ids[1:])
    for logits, side in ((before, "before"), (after, "after")):
        want_logit = logits[:-1].gather(1, targets[:, None])[:, 0]
        want_loss = torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="none")
        got_logit = torch.tensor([p[f"logit_{side}"] for p in predictions])
        got_loss = torch.tensor([p[f"loss_{side}"] for p in predictions])
        assert (got_logit - want_logit).abs().max().item() <= TOLERANCE
        assert (got_loss - want_loss).abs().max().item() <= LOSS_TOLERANCE
        listed = predictions[0][f"top_{side}"]
        assert [p["id"] for p in listed] == logits[0].topk(len(listed)).indices.tolist()
    for p in predictions:
        assert p["loss_change"] == pytest.approx(p["loss_after"] - p["loss_before"], abs=1e-6)
        assert p["prob_before"] == pytest.approx(np.exp(-p["loss_before"]), rel=1e-5)


def test_zero_ablation_matches_hf_with_a_pre_hook(corpus_api, hf_model):
    response = corpus_api.post(
        "/v1/ablate", json={"text": TEXT, "heads": HEADS, "mode": "zero", "top_k": 3}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    ids = [token["id"] for token in body["tokens"]]
    before, after = hooked_logits(hf_model, ids, []), hooked_logits(hf_model, ids, HEADS)
    check_against_hf(body, ids, before, after)
    assert body["means"] is None
    # Grouped by the next token's tag: the mean of the per-token changes.
    for row in body["by_next_tag"]:
        changes = [p["loss_change"] for p in body["predictions"] if p["next_tag"] == row["tag"]]
        assert row["tokens"] == len(changes)
        assert row["mean_loss_change"] == pytest.approx(np.mean(changes), abs=1e-6)
    tags = [token["tag"] for token in body["tokens"]]
    assert [p["next_tag"] for p in body["predictions"]] == tags[1:]


def test_mean_ablation_matches_hf_substituting_the_corpus_mean(corpus_api, hf_model):
    response = corpus_api.post("/v1/ablate", json={"text": TEXT, "heads": HEADS, "mode": "mean"})
    assert response.status_code == 200, response.text
    body = response.json()
    means = body["means"]
    assert means["sequences"] > 0 and means["tokens"] > means["sequences"]
    assert len(means["corpus_sha256"]) == 64
    # The means the server used, recomputed independently: HF's z over the same sequences.
    analysis = corpus_api.app.state.ablation_analysis
    corpus = analysis.corpus.corpus()
    _, indices = analysis.corpus.draw(means["seed"], means["sequences"])
    tokens = 0
    captured = []
    hooks = [
        block.attn.attention.out_proj.register_forward_pre_hook(
            lambda _m, args, layer=layer: captured.append((layer, args[0][0]))
        )
        for layer, block in enumerate(hf_model.transformer.h)
    ]
    config = hf_model.config
    d_head = config.hidden_size // config.num_heads
    sums = torch.zeros(config.num_layers, config.num_heads, d_head, dtype=torch.float64)
    try:
        for index in indices:
            ids = corpus_api.app.state.runtime.tokenizer(corpus.sequences[index]).input_ids
            ids = ids[: corpus_api.app.state.runtime.max_tokens]
            captured.clear()
            with torch.no_grad():
                hf_model(torch.tensor([ids]))
            for layer, z in captured:
                sums[layer] += z.double().view(len(ids), config.num_heads, d_head).sum(dim=0)
            tokens += len(ids)
    finally:
        for hook in hooks:
            hook.remove()
    assert tokens == means["tokens"]
    mean_z = (sums / tokens).float()
    ids = [token["id"] for token in body["tokens"]]
    after = hooked_logits(hf_model, ids, HEADS, mean_z)
    check_against_hf(body, ids, hooked_logits(hf_model, ids, []), after)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"heads": []}, "invalid_request"),
        ({"heads": [{"layer": 8, "head": 0}]}, "unknown_head"),
        ({"heads": [{"layer": 0, "head": 16}]}, "unknown_head"),
        ({"heads": [{"layer": 0, "head": 1}, {"layer": 0, "head": 1}]}, "invalid_request"),
        ({"mode": "resample"}, "invalid_request"),
        ({"top_k": 51}, "invalid_request"),
    ],
)
def test_bad_ablation_requests_get_422_with_the_envelope(corpus_api, change, code):
    body = {"text": TEXT, "heads": HEADS, "mode": "zero", **change}
    assert_error(corpus_api.post("/v1/ablate", json=body), 422, code)


def test_corpus_ablation_by_tag_pools_the_per_text_changes(corpus_api):
    request = {"heads": HEADS, "mode": "zero", "texts": TEXTS}
    first = corpus_api.post("/v1/corpus/ablation", json=request)
    assert first.status_code == 200, first.text
    assert first.headers["X-Headscope-Cache"] == "miss"
    body = first.json()
    per_tag: dict[str, list[float]] = {}
    for text in TEXTS:
        single = corpus_api.post("/v1/ablate", json={"text": text, "heads": HEADS}).json()
        for p in single["predictions"]:
            per_tag.setdefault(p["next_tag"], []).append(p["loss_change"])
    rows = {row["tag"]: row for row in body["by_next_tag"]}
    assert set(rows) == set(per_tag)
    for tag, changes in per_tag.items():
        assert rows[tag]["tokens"] == len(changes)
        assert rows[tag]["mean_loss_change"] == pytest.approx(np.mean(changes), abs=1e-6)
        interval = body["ci"]["mean_loss_change"][tag]
        assert interval["low"] <= rows[tag]["mean_loss_change"] + 1e-9
        assert interval["high"] >= rows[tag]["mean_loss_change"] - 1e-9
    assert body["predictions"] == sum(map(len, per_tag.values()))
    again = corpus_api.post("/v1/corpus/ablation", json=request)
    assert again.headers["X-Headscope-Cache"] == "hit" and again.json() == body


def test_corpus_ablation_grid_equals_single_head_ablations(corpus_api):
    tag = "NN"
    request = {"all_heads": True, "tag": tag, "mode": "zero", "texts": TEXTS}
    response = corpus_api.post("/v1/corpus/ablation", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    info = corpus_api.get("/v1/model").json()
    assert len(body["grid"]) == info["n_layers"]
    assert all(len(row) == info["n_heads"] for row in body["grid"])
    for layer, head in [(0, 0), (2, 0), (info["n_layers"] - 1, info["n_heads"] - 1)]:
        changes = []
        for text in TEXTS:
            single = corpus_api.post(
                "/v1/ablate", json={"text": text, "heads": [{"layer": layer, "head": head}]}
            ).json()
            changes += [p["loss_change"] for p in single["predictions"] if p["next_tag"] == tag]
        assert body["predictions"] == len(changes)
        assert body["grid"][layer][head] == pytest.approx(np.mean(changes), abs=1e-5)
    assert body["ci"]["grid"]["low"][2][0] <= body["grid"][2][0] + 1e-9


@pytest.mark.parametrize(
    "request_body",
    [
        {"all_heads": True, "texts": TEXTS},  # no tag
        {"heads": HEADS, "all_heads": True, "tag": "NN", "texts": TEXTS},  # both
        {"texts": TEXTS},  # neither
        {"heads": [], "texts": TEXTS},
        {"heads": HEADS, "tag": "NOT-A-TAG", "texts": TEXTS},
        {"heads": [{"layer": 0, "head": 99}], "texts": TEXTS},
    ],
)
def test_bad_corpus_ablation_requests_get_422(corpus_api, request_body):
    assert_error(corpus_api.post("/v1/corpus/ablation", json=request_body), 422)


@pytest.mark.parametrize("kind", ["induction", "previous_token", "duplicate_token"])
def test_head_scores_equal_hf_attention_on_the_documented_sequences(corpus_api, hf_model, kind):
    query = {"kind": kind, "seed": 3, "n_sequences": 2, "length": 20}
    response = corpus_api.get("/v1/heads/scores", params=query)
    assert response.status_code == 200, response.text
    body = response.json()
    length = query["length"]
    # The method as documented: uniform random ids, repeated once.
    rng = np.random.default_rng([query["seed"], query["n_sequences"], length])
    halves = rng.integers(0, hf_model.config.vocab_size, size=(query["n_sequences"], length))
    want = np.zeros((hf_model.config.num_layers, hf_model.config.num_heads))
    offset = {"induction": length - 1, "duplicate_token": length, "previous_token": 1}[kind]
    first = {"induction": length + 1, "duplicate_token": length, "previous_token": 1}[kind]
    for half in halves:
        ids = torch.tensor([list(half) * 2])
        with torch.no_grad():
            attentions = hf_model(ids, output_attentions=True).attentions
        queries = np.arange(first, 2 * length)
        for layer, pattern in enumerate(attentions):
            want[layer] += pattern[0][:, queries, queries - offset].mean(dim=-1).numpy()
    want /= query["n_sequences"]
    assert np.abs(np.array(body["scores"]) - want).max() <= TOLERANCE
    assert "repeat" in body["method"]
    assert (body["n_layers"], body["n_heads"]) == want.shape


def test_head_scores_refuse_sequences_over_max_tokens(corpus_api):
    max_tokens = corpus_api.get("/v1/model").json()["max_tokens"]
    response = corpus_api.get(
        "/v1/heads/scores", params={"kind": "induction", "length": max_tokens // 2 + 1}
    )
    assert_error(response, 422)
    assert_error(corpus_api.get("/v1/heads/scores", params={"kind": "bigram"}), 422)
