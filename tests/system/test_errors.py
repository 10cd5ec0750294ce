"""Promise 3, one error shape: every 4xx/5xx the service can produce, from the router, the
validation layer, the middleware, the runtime, the pool, the HTTP protocol and an unexpected
exception, is {"error": {"code", "message", "detail"}} with no traceback or file path in it."""

from __future__ import annotations

import socket

import httpx
from fastapi.testclient import TestClient

from tests.system.conftest import assert_envelope


def test_router_and_validation_errors(api):
    assert_envelope(api.get("/no/such/route"), 404, "not_found")
    method = api.get("/v1/tag")
    assert_envelope(method, 405, "method_not_allowed")
    assert method.headers["allow"] == "POST"
    assert_envelope(api.post("/v1/tag", json={"txt": "typo"}), 422, "invalid_request")
    assert_envelope(api.post("/v1/attention", json={"text": "a", "layer": 9, "head": 0}), 422)
    assert_envelope(api.post("/v1/tag", json={"text": " cat" * 600}), 413, "input_too_long")
    assert_envelope(api.post("/v1/tag", json={"text": "   "}), 400, "empty_text")
    assert_envelope(api.post("/v1/tag", content=b"{", headers={"content-type": "application/json"}))


def test_an_unexpected_exception_is_a_500_envelope_without_details(settings, runtime):
    from headscope.app import create_app

    app = create_app(settings, runtime=runtime)

    @app.get("/v1/explode")
    async def explode() -> None:
        raise RuntimeError("secret at /work/main/service/headscope/runtime/runtime.py line 7")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/explode")
    error = assert_envelope(response, 500, "internal_error")
    assert "secret" not in response.text and error["detail"] is None


def test_not_ready_is_a_503_envelope(settings, runtime):
    from headscope.app import create_app

    # Without the lifespan the app has no runtime yet: the state a loading server is in.
    client = TestClient(create_app(settings, runtime=runtime))
    response = client.get("/v1/model")
    assert_envelope(response, 503, "not_ready")
    assert response.headers["retry-after"]


def test_malformed_http_gets_the_envelope_too(hardened_server):
    host, port = "127.0.0.1", hardened_server.port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    response = httpx.Response(400, headers={"content-type": "application/json"}, content=body)
    assert_envelope(response, 400, "bad_http_request")
