"""Probe endpoints over the real app: the run, score grids, predictions checked against an
independent computation (Hugging Face's key/query/value projections + the stored weights), bad
input as 4xx envelopes, and 503 with a reason when no probes are loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import GPTNeoModel

from headscope.analysis.probes.store import MANIFEST, WEIGHTS

TEXT = 'Lily saw a big red ball. She ran to it and said, "Mom, look!"'
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def manifest(probe_run_dir):
    return json.loads((probe_run_dir / MANIFEST).read_text())


def assert_error(response, status, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "detail"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_run_info(probes_api, manifest):
    body = probes_api.get("/v1/probes").json()
    assert body["run_id"] == manifest["run_id"]
    assert body["vectors"] == ["key", "query", "value"]
    assert body["tags"] == manifest["tags"]
    assert body["model_fingerprint"] == probes_api.get("/v1/model").json()["weights_sha256"]
    assert body["split"]["train_sequences"] == len(manifest["split"]["train_sequences"])
    assert body["corpus"]["sha256"] == manifest["corpus"]["sha256"]
    by_vector = {row["vector"]: row for row in body["summary"]}
    for vector in ("key", "query", "value"):
        accuracy = np.asarray(manifest["metrics"]["vectors"][vector]["accuracy"])
        macro_f1 = np.asarray(manifest["metrics"]["vectors"][vector]["macro"]["f1"])
        assert by_vector[vector]["mean_accuracy"] == pytest.approx(accuracy.mean(), abs=1e-9)
        assert by_vector[vector]["best_macro_f1"] == pytest.approx(macro_f1.max(), abs=1e-9)
        best = by_vector[vector]["best_macro_f1_head"]
        assert macro_f1[best["layer"], best["head"]] == macro_f1.max()
    ready = probes_api.get("/readyz").json()
    assert ready["probes"] == "loaded"


def test_scores_grids(probes_api, manifest):
    grids = manifest["metrics"]["vectors"]
    body = probes_api.get("/v1/probes/scores", params={"vector": "key", "tag": "VBD"}).json()
    assert body["metric"] == "f1" and body["vector"] == "key" and body["tag"] == "VBD"
    np.testing.assert_allclose(body["scores"], grids["key"]["per_tag"]["VBD"]["f1"])
    assert body["support"] == manifest["metrics"]["support"]["VBD"]

    params = {"vector": "value", "tag": "NN", "metric": "precision"}
    body = probes_api.get("/v1/probes/scores", params=params).json()
    np.testing.assert_allclose(body["scores"], grids["value"]["per_tag"]["NN"]["precision"])

    params = {"vector": "query", "tag": "accuracy", "metric": "selectivity"}
    body = probes_api.get("/v1/probes/scores", params=params).json()
    control = np.asarray(grids["query"]["control"]["accuracy"])
    np.testing.assert_allclose(
        body["scores"], np.asarray(grids["query"]["accuracy"]) - control, atol=2e-6
    )
    assert body["support"] is None

    body = probes_api.get("/v1/probes/scores", params={"vector": "key", "tag": "macro"}).json()
    np.testing.assert_allclose(body["scores"], grids["key"]["macro"]["f1"])
    assert np.asarray(body["scores"]).shape == (8, 16)


@pytest.mark.parametrize(
    "params",
    [
        {"vector": "keys", "tag": "NN"},
        {"vector": "key", "tag": "NOPE"},
        {"vector": "key", "tag": "NN", "metric": "auc"},
        {"vector": "key"},
    ],
)
def test_scores_bad_input(probes_api, params):
    assert_error(probes_api.get("/v1/probes/scores", params=params), 422)


def hf_vectors(model_dir, ids, layer, head, vector):
    """The head's vectors from an independent Hugging Face model, via a hook on its projection."""
    model = GPTNeoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    projection = {"key": "k_proj", "query": "q_proj", "value": "v_proj"}[vector]
    captured = {}
    module = getattr(model.h[layer].attn.attention, projection)
    hook = module.register_forward_hook(lambda _m, _i, output: captured.setdefault("out", output))
    with torch.no_grad():
        model(torch.tensor([ids]))
    hook.remove()
    d_head = model.config.hidden_size // model.config.num_heads
    return captured["out"][0, :, head * d_head : (head + 1) * d_head].double().numpy()


def test_predict_matches_an_independent_computation(probes_api, probe_run_dir, standin_dir):
    request = {"text": TEXT, "vector": "value", "layer": 2, "head": 5, "top_k": 4}
    response = probes_api.post("/v1/probes/predict", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    tokens, predictions = body["tokens"], body["predictions"]
    assert len(tokens) == len(predictions) > 5
    assert all(token["tag"] for token in tokens)
    assert next(t for t in tokens if t["text"] == " ball")["tag"] == "NN"

    ids = [token["id"] for token in tokens]
    features = hf_vectors(standin_dir, ids, 2, 5, "value")  # [token, d_head]
    tensors = load_file(str(probe_run_dir / WEIGHTS))
    logits = features @ tensors["value.coef"][2, 5].T.astype(np.float64)
    logits += tensors["value.intercept"][2, 5]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    tags = probes_api.get("/v1/probes").json()["tags"]
    for row, prediction in zip(expected, predictions, strict=True):
        order = np.argsort(-row, kind="stable")[:4]
        assert prediction["tag"] == tags[order[0]]
        assert prediction["probability"] == pytest.approx(row[order[0]], abs=TOLERANCE)
        assert [item["tag"] for item in prediction["top"]] == [tags[i] for i in order]
        for item, index in zip(prediction["top"], order, strict=True):
            assert item["probability"] == pytest.approx(row[index], abs=TOLERANCE)


def test_predict_top_k_is_capped_at_the_number_of_tags(probes_api):
    request = {"text": "The dog ran.", "vector": "key", "layer": 0, "head": 0, "top_k": 1000}
    body = probes_api.post("/v1/probes/predict", json=request).json()
    n_tags = len(probes_api.get("/v1/probes").json()["tags"])
    assert all(len(p["top"]) == n_tags for p in body["predictions"])
    assert all(
        abs(sum(item["probability"] for item in p["top"]) - 1) < 1e-5 for p in body["predictions"]
    )


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"layer": 8}, 422, "unknown_head"),
        ({"head": 16}, 422, "unknown_head"),
        ({"head": -1}, 422, "unknown_head"),
        ({"vector": "keys"}, 422, "invalid_request"),
        ({"top_k": 0}, 422, "invalid_request"),
        ({"layer": None}, 422, "invalid_request"),
        ({"colour": "red"}, 422, "invalid_request"),
        ({"text": "   "}, 400, "empty_text"),
    ],
)
def test_predict_bad_input(probes_api, change, status, code):
    request = {"text": TEXT, "vector": "key", "layer": 0, "head": 0, **change}
    request = {key: value for key, value in request.items() if value is not None}
    assert_error(probes_api.post("/v1/probes/predict", json=request), status, code)


def test_without_probes_every_probe_endpoint_is_503_with_the_reason(api, runtime):
    reason = runtime.probes_reason
    assert reason and "headscope probes train" in reason
    responses = [
        api.get("/v1/probes"),
        api.get("/v1/probes/scores", params={"vector": "key", "tag": "NN"}),
        api.post("/v1/probes/predict", json={"text": TEXT, "vector": "key", "layer": 0, "head": 0}),
    ]
    for response in responses:
        error = assert_error(response, 503, "probes_not_loaded")
        assert error["message"] == reason
    ready = api.get("/readyz").json()
    assert ready["probes"] == "unavailable" and ready["probes_reason"] == reason
