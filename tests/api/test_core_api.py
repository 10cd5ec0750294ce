"""The v1 core API through the real app (in-process), checked against the runtime's engine."""

from __future__ import annotations

import pytest
import torch

TEXT = 'Lily said, "Look at the big red ball!" Tom ran to get it.'


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "detail"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def test_health_ready_and_model(api, runtime):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz").json()
    assert ready["ready"] is True
    info = api.get("/v1/model").json()
    assert info["n_layers"] == 8 and info["n_heads"] == 16
    assert info["d_head"] == 4 and info["d_model"] == 64
    assert info["max_tokens"] == 512
    assert info["window_size"] == 256
    assert info["attention_layers"] == ["global", "local"] * 4
    assert info["weights_sha256"] == runtime.weights_sha256 and len(info["weights_sha256"]) == 64
    assert "TinyStories-1M" not in info["model_id"]  # the stand-in is never named as the real one


def test_tag_tokens_carry_offsets_into_the_text(api):
    tokens = api.post("/v1/tag", json={"text": TEXT}).json()["tokens"]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    for token in tokens:
        assert TEXT[token["start"] : token["end"]] == token["text"]
        assert token["tag"]
    assert "".join(t["text"] for t in tokens) == TEXT
    paper = api.post("/v1/tag", json={"text": TEXT, "alignment": "paper"}).json()["tokens"]
    assert [t["id"] for t in paper] == [t["id"] for t in tokens]


def test_activity_matches_engine_and_selection(api, runtime):
    body = api.post("/v1/activity", json={"text": TEXT, "layers": [2, 6], "heads": [0, 4]}).json()
    assert body["layers"] == [2, 6] and body["heads"] == [0, 4]
    ids = torch.tensor([[t["id"] for t in body["tokens"]]])
    expected = runtime.engine.run(ids).activity[0]
    got = torch.tensor(body["activity"])
    assert got.shape == (2, 2, ids.shape[1])
    assert torch.allclose(got, expected[[2, 6]][:, [0, 4]], atol=1e-6)
    full = api.post("/v1/activity", json={"text": TEXT}).json()
    assert torch.tensor(full["activity"]).shape == (8, 16, ids.shape[1])


def test_attention_full_and_one_row(api, runtime):
    body = api.post("/v1/attention", json={"text": TEXT, "layer": 2, "head": 0}).json()
    pattern = torch.tensor(body["pattern"])
    n = len(body["tokens"])
    assert pattern.shape == (n, n)
    assert torch.allclose(pattern.sum(-1), torch.ones(n), atol=1e-5)
    ids = torch.tensor([[t["id"] for t in body["tokens"]]])
    expected = runtime.engine.run(ids, all_patterns=True).all_patterns[0, 2, 0]
    assert torch.allclose(pattern, expected, atol=1e-6)
    row = api.post("/v1/attention", json={"text": TEXT, "layer": 2, "head": 0, "query": 5}).json()
    assert row["query"] == 5
    assert torch.allclose(torch.tensor(row["pattern"]), pattern[5:6], atol=1e-7)


def test_analyze_returns_tags_activity_and_patterns(api):
    body = api.post(
        "/v1/analyze", json={"text": TEXT, "patterns": [{"layer": 6, "head": 4}]}
    ).json()
    n = len(body["tokens"])
    assert all(t["tag"] for t in body["tokens"])
    assert torch.tensor(body["activity"]).shape == (8, 16, n)
    assert [(p["layer"], p["head"]) for p in body["patterns"]] == [(6, 4)]
    assert torch.tensor(body["patterns"][0]["pattern"]).shape == (n, n)
    activity_only = api.post("/v1/activity", json={"text": TEXT}).json()["activity"]
    assert torch.allclose(torch.tensor(body["activity"]), torch.tensor(activity_only))


def test_exactly_512_tokens_is_accepted_and_513_refused(api, runtime):
    word_ids = runtime.tokenizer(" cat").input_ids
    assert len(word_ids) == 1
    ok = api.post("/v1/activity", json={"text": " cat" * 512, "layers": [0], "heads": [0]})
    assert ok.status_code == 200
    error = assert_error(
        api.post("/v1/activity", json={"text": " cat" * 513}), 413, "input_too_long"
    )
    assert "513" in error["message"] and "512" in error["message"]


@pytest.mark.parametrize("path", ["/v1/tag", "/v1/activity", "/v1/analyze"])
@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_text_is_400(api, path, text):
    assert_error(api.post(path, json={"text": text}), 400, "empty_text")


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/attention", {"text": "hi", "layer": 8, "head": 0}),
        ("/v1/attention", {"text": "hi", "layer": 0, "head": 16}),
        ("/v1/attention", {"text": "hi", "layer": -1, "head": 0}),
        ("/v1/attention", {"text": "hi", "layer": 10**30, "head": 0}),
        ("/v1/attention", {"text": "hi there", "layer": 0, "head": 0, "query": 2}),
        ("/v1/attention", {"text": "hi", "layer": "two", "head": 0}),
        ("/v1/attention", {"text": "hi", "head": 0}),
        ("/v1/activity", {"text": "hi", "layers": [99]}),
        ("/v1/activity", {"text": "hi", "heads": [16]}),
        ("/v1/activity", {"text": "hi", "heads": []}),
        ("/v1/analyze", {"text": "hi", "patterns": [{"layer": 0, "head": 99}]}),
        ("/v1/analyze", {"text": "hi", "patterns": [{"layer": 0}]}),
        ("/v1/tag", {"text": "hi", "alignment": "middle"}),
        ("/v1/tag", {"text": "hi", "bogus": 1}),
        ("/v1/tag", {"text": 42}),
    ],
)
def test_bad_fields_are_422(api, path, body):
    assert_error(api.post(path, json=body), 422)


def test_lone_surrogate_is_422(api):
    raw = b'{"text": "a\\ud800b"}'
    response = api.post("/v1/tag", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 422)


@pytest.mark.parametrize("raw", [b"{", b"[]", b"null", b'"text"', b"\xff\xfe"])
def test_malformed_bodies_are_4xx(api, raw):
    response = api.post("/v1/tag", content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code)


def test_body_over_the_cap_is_413(api):
    error = assert_error(api.post("/v1/tag", json={"text": "a " * 600_000}), 413, "body_too_large")
    assert "1000000" in error["message"]


def test_unknown_route_and_method_use_the_envelope(api):
    assert_error(api.get("/v1/nope"), 404, "not_found")
    assert_error(api.get("/v1/tag"), 405, "method_not_allowed")


def test_openapi_describes_every_field(api):
    spec = api.get("/openapi.json").json()
    for name, schema in spec["components"]["schemas"].items():
        for field, definition in schema.get("properties", {}).items():
            if name in {"ValidationError", "HTTPValidationError"}:
                continue
            assert definition.get("description"), f"{name}.{field} has no description"


def test_a_response_estimated_over_the_limit_is_413_before_any_work(settings, runtime, monkeypatch):
    from fastapi.testclient import TestClient

    from headscope.app import create_app

    work = []
    for name in ("encode", "prefetch_tags"):
        monkeypatch.setattr(runtime, name, lambda *args, _name=name: work.append(_name))
    monkeypatch.setattr(runtime.engine, "run", lambda *args, **kwargs: work.append("forward"))
    limited = settings.model_copy(update={"max_response_bytes": 100_000})
    text = "Once upon a time there was a cat. " * 20
    with TestClient(create_app(limited, runtime=runtime)) as client:
        for path, body in [
            (
                "/v1/analyze",
                {"text": text, "patterns": [{"layer": 1, "head": h} for h in range(4)]},
            ),
            ("/v1/activity", {"text": text}),
            ("/v1/attention", {"text": text, "layer": 0, "head": 0}),
        ]:
            response = client.post(path, json=body)
            assert response.status_code == 413, (path, response.text[:300])
            error = response.json()["error"]
            assert error["code"] == "response_too_large"
            assert error["detail"]["max_response_bytes"] == 100_000
            assert error["detail"]["estimated_bytes"] > 100_000
    assert work == []
