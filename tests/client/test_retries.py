"""Retries observed on real servers: which failures are sent again, how often, and how long the
client waits (Retry-After, else exponential backoff)."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from headscope_client import (
    AsyncClient,
    BadRequestError,
    Client,
    RateLimitError,
    UnavailableError,
    UnprocessableEntityError,
)
from headscope_client._base import retry_after_seconds
from headscope_client._constants import MAX_RETRY_AFTER, RETRY_STATUS_CODES
from tests.client.conftest import AsyncCountingTransport, CountingTransport, Step

MODEL_INFO = {
    "model_id": "scripted",
    "architecture": "GPTNeoForCausalLM",
    "n_layers": 8,
    "n_heads": 16,
    "d_head": 4,
    "d_model": 64,
    "max_tokens": 512,
    "max_position_embeddings": 2048,
    "attention_layers": ["global", "local"] * 4,
    "window_size": 256,
    "weights_sha256": "0" * 64,
}


def envelope(code: str) -> dict:
    return {"error": {"code": code, "message": code.replace("_", " "), "detail": None}}


def test_503_is_retried_max_retries_times_then_raised(scripted):
    scripted.reset({"/v1/model": [Step(503, envelope("not_ready"), {"Retry-After": "0"})]})
    transport = CountingTransport()
    client = Client(scripted.base_url, max_retries=3, transport=transport)
    with client, pytest.raises(UnavailableError):
        client.model()
    assert len(transport.requests) == 4  # the first try and 3 retries
    assert len(scripted.hits("/v1/model")) == 4


@pytest.mark.parametrize("status", sorted(RETRY_STATUS_CODES))
def test_retryable_statuses_recover_on_the_next_try(scripted, status):
    scripted.reset(
        {"/v1/model": [Step(status, envelope("busy"), {"Retry-After": "0"}), Step(200, MODEL_INFO)]}
    )
    with Client(scripted.base_url, max_retries=1) as client:
        assert client.model().model_id == "scripted"
    assert len(scripted.hits("/v1/model")) == 2


def test_429_gives_a_rate_limit_error_once_retries_run_out(scripted):
    scripted.reset({"/v1/model": [Step(429, envelope("overloaded"), {"Retry-After": "0"})]})
    with Client(scripted.base_url, max_retries=1) as client, pytest.raises(RateLimitError):
        client.model()
    assert len(scripted.hits("/v1/model")) == 2


def test_retry_after_is_honoured(scripted):
    # A lower bound only: the client must not come back before the server said it may.
    scripted.reset(
        {
            "/v1/model": [
                Step(503, envelope("not_ready"), {"Retry-After": "1"}),
                Step(200, MODEL_INFO),
            ]
        }
    )
    with Client(scripted.base_url, max_retries=1) as client:
        client.model()
    first, second = scripted.hits("/v1/model")
    assert second - first >= 0.95


async def test_retry_after_is_honoured_by_the_async_client(scripted):
    scripted.reset(
        {
            "/v1/model": [
                Step(503, envelope("not_ready"), {"Retry-After": "1"}),
                Step(200, MODEL_INFO),
            ]
        }
    )
    transport = AsyncCountingTransport()
    async with AsyncClient(scripted.base_url, max_retries=1, transport=transport) as client:
        assert (await client.model()).model_id == "scripted"
    first, second = scripted.hits("/v1/model")
    assert second - first >= 0.95 and len(transport.requests) == 2


def test_without_retry_after_the_client_backs_off(scripted):
    scripted.reset({"/v1/model": [Step(502, envelope("bad_gateway")), Step(200, MODEL_INFO)]})
    with Client(scripted.base_url, max_retries=1) as client:
        client.model()
    first, second = scripted.hits("/v1/model")
    # The first backoff is 0.5 s less up to 25% jitter.
    assert second - first >= 0.37


def test_a_500_without_the_envelope_is_retried(scripted):
    # What a proxy in front answers when it loses the server mid-request (Ray Serve's, when a
    # replica dies); the server's own 500 carries the envelope and is not retried
    # (test_errors.test_500_is_a_server_error_and_not_retried).
    scripted.reset({"/v1/model": [Step(500, text="Internal Server Error"), Step(200, MODEL_INFO)]})
    with Client(scripted.base_url, max_retries=1) as client:
        assert client.model().model_id == "scripted"
    assert len(scripted.hits("/v1/model")) == 2


async def test_a_500_without_the_envelope_is_retried_by_the_async_client(scripted):
    scripted.reset({"/v1/model": [Step(500, text="Internal Server Error"), Step(200, MODEL_INFO)]})
    async with AsyncClient(scripted.base_url, max_retries=1) as client:
        assert (await client.model()).model_id == "scripted"
    assert len(scripted.hits("/v1/model")) == 2


def test_retry_after_parsing():
    def response(value: str) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": value})

    assert retry_after_seconds(response("2")) == 2.0
    assert retry_after_seconds(response("0.25")) == 0.25
    in_ten_seconds = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= retry_after_seconds(response(in_ten_seconds)) <= 10.0
    assert retry_after_seconds(response("soon")) is None
    assert retry_after_seconds(httpx.Response(503)) is None
    assert MAX_RETRY_AFTER >= 1


def test_4xx_is_never_retried(live_server):
    transport = CountingTransport()
    with Client(live_server, max_retries=3, transport=transport) as client:
        with pytest.raises(BadRequestError):
            client.tag("")
        with pytest.raises(UnprocessableEntityError):
            client.activity("A cat.", layers=[99])
    assert len(transport.requests) == 2


def test_max_retries_zero_sends_once(scripted):
    scripted.reset({"/v1/model": [Step(503, envelope("not_ready"), {"Retry-After": "0"})]})
    with Client(scripted.base_url, max_retries=0) as client, pytest.raises(UnavailableError):
        client.model()
    assert len(scripted.hits("/v1/model")) == 1
    with pytest.raises(ValueError):
        Client(scripted.base_url, max_retries=-1)
