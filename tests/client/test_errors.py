"""Each exception class provoked for real: by the headscope server itself where it can produce
the error, by a scripted server on 127.0.0.1 for the statuses headscope does not send on demand."""

from __future__ import annotations

import httpx
import pytest

from headscope_client import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    HeadscopeError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    UnavailableError,
    UnprocessableEntityError,
)
from tests.client.conftest import AsyncCountingTransport, CountingTransport, Step
from tests.helpers import ServerThread


def test_empty_text_is_a_bad_request(client):
    with pytest.raises(BadRequestError) as caught:
        client.activity(" \n ")
    error = caught.value
    assert (error.status_code, error.code) == (400, "empty_text")
    assert "empty" in error.message
    assert str(error).startswith("400 empty_text: ")
    assert isinstance(error, APIStatusError) and isinstance(error, HeadscopeError)


def test_unknown_layer_is_unprocessable(client):
    with pytest.raises(UnprocessableEntityError) as caught:
        client.attention("Once upon a time.", layer=99, head=0)
    assert (caught.value.status_code, caught.value.code) == (422, "unknown_head")
    assert caught.value.detail == {"layer": 99}
    with pytest.raises(UnprocessableEntityError, match="head 16 does not exist"):
        client.analyze("Once upon a time.", patterns=[(0, 16)])


def test_too_long_text_is_payload_too_large(client):
    max_tokens = client.model().max_tokens
    with pytest.raises(PayloadTooLargeError) as caught:
        client.tag("cat " * (max_tokens + 10))
    assert caught.value.code == "input_too_long"
    assert caught.value.detail["max_tokens"] == max_tokens
    assert caught.value.detail["tokens"] > max_tokens


def test_unknown_route_is_not_found(live_server):
    # An older or differently mounted server: the route does not exist there.
    with Client(live_server + "/not-here") as client, pytest.raises(NotFoundError) as caught:
        client.model()
    assert caught.value.code == "not_found"


def test_missing_or_wrong_key_is_an_authentication_error(keyed_server, monkeypatch):
    monkeypatch.delenv("HEADSCOPE_API_KEY", raising=False)
    base_url, _ = keyed_server
    with Client(base_url) as client, pytest.raises(AuthenticationError) as caught:
        client.model()
    assert (caught.value.status_code, caught.value.code) == (401, "unauthorized")
    with Client(base_url, api_key="wrong") as client, pytest.raises(AuthenticationError):
        client.model()


def test_stopped_server_is_a_connection_error(settings, runtime):
    from headscope.app import create_app

    with ServerThread(create_app(settings, runtime=runtime)) as server:
        base_url = server.base_url
        with Client(base_url) as client:
            assert client.health().status == "ok"
    transport = CountingTransport()
    client = Client(base_url, max_retries=1, transport=transport)
    with client, pytest.raises(APIConnectionError) as caught:
        client.health()
    assert not isinstance(caught.value, APITimeoutError)
    assert base_url in caught.value.message
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(transport.requests) == 2  # connection errors are retried


def test_slow_server_is_a_timeout_and_not_retried(scripted):
    scripted.reset({"/v1/model": [Step(200, {}, sleep=1.0)]})
    transport = CountingTransport()
    client = Client(scripted.base_url, timeout=0.2, max_retries=2, transport=transport)
    with client, pytest.raises(APITimeoutError) as caught:
        client.model()
    assert isinstance(caught.value, APIConnectionError)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    # The server may still be working: a read timeout is not sent again.
    assert len(transport.requests) == 1 and len(scripted.hits("/v1/model")) == 1


async def test_slow_server_is_a_timeout_for_the_async_client(scripted):
    scripted.reset({"/v1/model": [Step(200, {}, sleep=1.0)]})
    transport = AsyncCountingTransport()
    async with AsyncClient(scripted.base_url, timeout=0.2, transport=transport) as client:
        with pytest.raises(APITimeoutError):
            await client.model()
    assert len(transport.requests) == 1


def test_500_is_a_server_error_and_not_retried(scripted):
    envelope = {"error": {"code": "internal_error", "message": "boom", "detail": None}}
    scripted.reset({"/v1/model": [Step(500, envelope)]})
    with Client(scripted.base_url, max_retries=2) as client, pytest.raises(ServerError) as caught:
        client.model()
    assert type(caught.value) is ServerError
    assert (caught.value.status_code, caught.value.code, caught.value.message) == (
        500,
        "internal_error",
        "boom",
    )
    assert len(scripted.hits("/v1/model")) == 1


def test_a_body_that_is_no_envelope_still_gives_status_and_text(scripted):
    scripted.reset({"/v1/model": [Step(502, text="<html>Bad Gateway from the proxy</html>")]})
    with Client(scripted.base_url, max_retries=0) as client, pytest.raises(ServerError) as caught:
        client.model()
    assert (caught.value.status_code, caught.value.code) == (502, "http_502")
    assert "Bad Gateway from the proxy" in caught.value.message


def test_503_is_unavailable_and_a_server_error(scripted):
    envelope = {"error": {"code": "not_ready", "message": "loading", "detail": None}}
    scripted.reset({"/v1/model": [Step(503, envelope)]})
    with Client(scripted.base_url, max_retries=0) as client, pytest.raises(ServerError) as caught:
        client.model()
    assert isinstance(caught.value, UnavailableError) and caught.value.code == "not_ready"


def test_success_with_a_wrong_body_is_a_response_validation_error(scripted):
    scripted.reset({"/v1/model": [Step(200, {"model_id": "x"})]})
    client = Client(scripted.base_url)
    with client, pytest.raises(APIResponseValidationError) as caught:
        client.model()
    assert caught.value.status_code == 200
    assert "not a ModelInfo" in caught.value.message


def test_ready_reports_not_ready_instead_of_raising(scripted):
    body = {"error": {"code": "not_ready", "message": "loading", "detail": None}}
    scripted.reset({"/readyz": [Step(503, body)]})
    with Client(scripted.base_url) as client:
        ready = client.ready()
    assert ready.ready is False and ready.probes_reason == "loading"
    assert len(scripted.hits("/readyz")) == 1
