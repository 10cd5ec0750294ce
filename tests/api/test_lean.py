"""The lean path (headscope.api.lean) answers /v1/analyze and /v1/activity as FastAPI would:
the same bytes, errors once with the one envelope, and bodies that do not validate worded by
FastAPI itself."""

from __future__ import annotations

import json

import pytest

from headscope.errors import InvalidRequest

# A JSON media type FastAPI parses but the lean path leaves to FastAPI's route.
FASTAPI_ONLY = {"content-type": "application/vnd.test+json"}
TEXT = 'Lily said, "The cat ran home." Then she smiled.'


@pytest.mark.parametrize("path", ["/v1/analyze", "/v1/activity"])
def test_lean_and_fastapi_give_the_same_bytes(api, path):
    body = json.dumps({"text": TEXT}).encode()
    lean = api.post(path, content=body, headers={"content-type": "application/json"})
    routed = api.post(path, content=body, headers=FASTAPI_ONLY)
    assert lean.status_code == routed.status_code == 200
    assert lean.content == routed.content
    assert lean.headers["content-type"] == routed.headers["content-type"]
    assert lean.headers["content-length"] == routed.headers["content-length"]


@pytest.mark.parametrize(
    "body", [{"text": 5}, {"text": TEXT, "patterns": [{"layer": 99, "head": 0}]}, [1, 2], "x"]
)
def test_a_body_that_does_not_validate_is_worded_by_fastapi(api, body):
    raw = json.dumps(body).encode()
    lean = api.post("/v1/analyze", content=raw, headers={"content-type": "application/json"})
    routed = api.post("/v1/analyze", content=raw, headers=FASTAPI_ONLY)
    assert 400 <= lean.status_code < 500
    assert lean.status_code == routed.status_code
    assert lean.content == routed.content
    assert set(lean.json()["error"]) == {"code", "message", "detail"}


def test_an_error_while_answering_runs_the_analysis_once(api, runtime, monkeypatch):
    calls = []

    def failing_analysis(*args, **kwargs):
        calls.append(args)
        raise InvalidRequest("refused by the test")

    monkeypatch.setattr(runtime, "analyze_payload", failing_analysis)
    response = api.post("/v1/analyze", json={"text": TEXT})
    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": InvalidRequest.code,
        "message": "refused by the test",
        "detail": None,
    }
    assert len(calls) == 1


def test_an_unexpected_error_is_a_500_envelope_not_a_replay(api, runtime, monkeypatch):
    calls = []

    def broken_analysis(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("boom")

    monkeypatch.setattr(runtime, "activity_payload", broken_analysis)
    from fastapi.testclient import TestClient

    with TestClient(api.app, raise_server_exceptions=False) as client:
        response = client.post("/v1/activity", json={"text": TEXT})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert len(calls) == 1


def test_a_format_not_offered_is_406_from_the_lean_path(api):
    response = api.post("/v1/analyze", json={"text": TEXT}, headers={"accept": "application/x-npy"})
    assert response.status_code == 406
    assert response.json()["error"]["code"]
