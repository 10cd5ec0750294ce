"""The lean path of /v1/analyze and /v1/activity: the same answers as FastAPI's, and every request
it does not take (or that fails) handed to FastAPI whole."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from headscope.api.lean import LeanRoutes
from headscope.encoding import SAFETENSORS

# Same JSON, parsed by FastAPI alone: LeanRoutes takes only `application/json` itself.
FASTAPI_ONLY = {"Content-Type": "application/x-fastapi-only+json"}
TEXT = 'Tom saw a "big" dog. It ran to the park, and he followed it.'


@pytest.fixture()
def lean_answers(monkeypatch):
    """How many requests LeanRoutes answered itself."""
    answered = []
    answer = LeanRoutes._answer

    async def counting(scope, route, body):
        result = await answer(scope, route, body)
        answered.append(result is not None)
        return result

    monkeypatch.setattr(LeanRoutes, "_answer", staticmethod(counting))
    return answered


@pytest.mark.parametrize(
    ("path", "body", "accept"),
    [
        ("/v1/analyze", {"text": TEXT}, None),
        ("/v1/analyze", {"text": TEXT, "patterns": [{"layer": 2, "head": 0}], "top_k": 3}, None),
        ("/v1/analyze", {"text": TEXT, "dtype": "float16", "decimals": 3}, "application/json"),
        ("/v1/analyze", {"text": TEXT, "patterns": [{"layer": 5, "head": 5}]}, SAFETENSORS),
        ("/v1/activity", {"text": TEXT, "layers": [2, 6], "heads": [0, 4]}, None),
        ("/v1/activity", {"text": TEXT}, "application/x-npy"),
        ("/v1/activity", {"text": TEXT}, "text/html, */*;q=0.5"),
    ],
)  # fmt: skip
def test_lean_answers_are_fastapis_byte_for_byte(api, lean_answers, path, body, accept):
    headers = {"Accept": accept} if accept else {}
    lean = api.post(path, json=body, headers=headers)
    plain = api.post(path, content=httpx.Request("POST", "/", json=body).content,
                     headers={**headers, **FASTAPI_ONLY})  # fmt: skip
    assert lean_answers == [True]  # the second never reached it: not application/json
    assert lean.status_code == plain.status_code == 200
    assert lean.content == plain.content
    assert lean.headers["content-type"] == plain.headers["content-type"]
    assert lean.headers["content-length"] == plain.headers["content-length"]


@pytest.mark.parametrize(
    ("path", "content", "headers", "status", "code"),
    [
        ("/v1/analyze", b'{"text": ', {}, 400, "invalid_json"),
        ("/v1/analyze", b"[1, 2]", {}, 422, "invalid_request"),
        ("/v1/analyze", b'{"text": "Hi", "extra": 1}', {}, 422, "invalid_request"),
        ("/v1/analyze", b'{"text": "   "}', {}, 400, "empty_text"),
        ("/v1/analyze", b'{"text": "Hi", "patterns": [{"layer": 9, "head": 0}]}', {}, 422,
         "unknown_head"),
        ("/v1/analyze", b'{"text": "Hi"}', {"Accept": "application/x-npy"}, 406, "not_acceptable"),
        ("/v1/activity", b'{"text": "' + b"word " * 5000 + b'"}', {}, 413, "input_too_long"),
        ("/v1/activity", b'{"text": NaN}', {}, 422, "invalid_request"),
    ],
)  # fmt: skip
def test_what_the_lean_path_does_not_answer_fastapi_answers_as_before(
    api, lean_answers, path, content, headers, status, code
):
    lean = api.post(path, content=content, headers={"Content-Type": "application/json", **headers})
    plain = api.post(path, content=content, headers={**FASTAPI_ONLY, **headers})
    assert lean_answers == [False]
    assert lean.status_code == plain.status_code == status
    assert lean.json() == plain.json()
    assert lean.json()["error"]["code"] == code


def test_a_body_in_pieces_is_replayed_whole_to_fastapi():
    """A request the lean path declines reaches the app with the body it arrived with."""
    seen = []

    async def app(scope, receive, send):
        message = await receive()
        seen.append((message["body"], message["more_body"]))
        seen.append((await receive())["type"])

    pieces = [b'{"text": ', b'"Hi", "extra"', b": 1}"]
    messages = [
        {"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1}
        for index, piece in enumerate(pieces)
    ] + [{"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0)

    class State:
        runtime = pool = None

    class App:
        state = State()

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/analyze",
        "headers": [(b"content-type", b"application/json")],
        "app": App(),
    }
    asyncio.run(LeanRoutes(app)(scope, receive, None))
    assert seen == [(b"".join(pieces), False), "http.disconnect"]


def test_guards_still_come_first(settings, runtime, lean_answers):
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from headscope.app import create_app

    keyed = settings.model_copy(update={"api_key": SecretStr("k"), "max_body_bytes": 100})
    with TestClient(create_app(keyed, runtime=runtime)) as api:
        assert api.post("/v1/analyze", json={"text": TEXT}).status_code == 401
        authorized = {"Authorization": "Bearer k"}
        too_big = api.post("/v1/analyze", json={"text": "x" * 200}, headers=authorized)
        assert too_big.status_code == 413
        assert api.post("/v1/analyze", json={"text": "Hi."}, headers=authorized).status_code == 200
    assert lean_answers == [True]
