"""`analyze_many` on both clients, against a real server on 127.0.0.1: results in input order,
per-text errors in place, concurrency bounded and reached, the retry policy, a progress bar."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest

from headscope_client import (
    AnalyzeResult,
    AsyncClient,
    BadRequestError,
    Client,
    PayloadTooLargeError,
    RateLimitError,
)
from tests.client.conftest import Step

TEXTS = [f"Tom had {n} red balls. He gave one to Sue, and she smiled." for n in range(7)]


class GateTransport(httpx.BaseTransport):
    """A real HTTP transport that holds each request until `width` are in flight together, and
    records the most that ever were: a client that never sends `width` at once fails here by
    construction, whatever the machine's speed."""

    def __init__(self, width: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.width = width
        self.lock = threading.Lock()
        self.in_flight = self.most = 0
        self.full = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            if self.in_flight >= self.width:
                self.full.set()
        try:
            if not self.full.wait(timeout=60):
                raise AssertionError(f"never {self.width} requests in flight together")
            return self.inner.handle_request(request)
        finally:
            with self.lock:
                self.in_flight -= 1

    def close(self) -> None:
        self.inner.close()


class AsyncGateTransport(httpx.AsyncBaseTransport):
    """GateTransport's twin for the async client."""

    def __init__(self, width: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.width = width
        self.in_flight = self.most = 0
        self.full = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight >= self.width:
            self.full.set()
        try:
            await asyncio.wait_for(self.full.wait(), timeout=60)
            return await self.inner.handle_async_request(request)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


def joined(result: AnalyzeResult) -> str:
    return "".join(token.text for token in result.tokens)


def test_results_come_in_input_order_with_each_error_in_place(client):
    too_long = "Once upon a time there was a cat. " * 200
    texts = [TEXTS[0], "   ", TEXTS[1], too_long, TEXTS[2]]
    results = client.analyze_many(texts, patterns=[(3, 4)], concurrency=3)
    assert [type(result).__name__ for result in results] == [
        "AnalyzeResult", "BadRequestError", "AnalyzeResult", "PayloadTooLargeError",
        "AnalyzeResult",
    ]  # fmt: skip
    assert isinstance(results[1], BadRequestError) and results[1].code == "empty_text"
    assert isinstance(results[3], PayloadTooLargeError)
    for index in (0, 2, 4):
        assert joined(results[index]) == texts[index]
        one = client.analyze(texts[index], patterns=[(3, 4)], format="safetensors")
        assert results[index] == one
    # The batch asks for safetensors by default (numpy and safetensors are installed here).
    assert isinstance(results[0].activity, np.ndarray)
    assert client.analyze_many([]) == []


def test_concurrency_is_reached_and_never_exceeded(live_server):
    transport = GateTransport(width=3)
    with Client(live_server, transport=transport) as client:
        results = client.analyze_many(TEXTS, concurrency=3, format="safetensors")
    assert transport.most == 3
    assert [joined(result) for result in results] == TEXTS


async def test_async_concurrency_is_reached_and_never_exceeded(live_server, client):
    transport = AsyncGateTransport(width=4)
    async with AsyncClient(live_server, transport=transport) as aclient:
        results = await aclient.analyze_many(TEXTS, concurrency=4, dtype="float16")
    assert transport.most == 4
    assert results == client.analyze_many(TEXTS, dtype="float16")


def test_a_refused_text_is_retried_by_the_usual_policy(scripted, client):
    answer = client.analyze(TEXTS[0]).model_dump()
    busy = Step(429, {"error": {"code": "busy", "message": "queue full"}}, {"Retry-After": "0"})
    scripted.reset({"/v1/analyze": [busy, Step(body=answer)]})
    with Client(scripted.base_url, max_retries=2) as retrying:
        results = retrying.analyze_many(TEXTS[:3], concurrency=2)
    assert all(isinstance(result, AnalyzeResult) for result in results)
    assert len(scripted.hits("/v1/analyze")) == 4  # three texts, one of them sent twice

    scripted.reset({"/v1/analyze": [busy, Step(body=answer)]})
    with Client(scripted.base_url, max_retries=0) as impatient:
        results = impatient.analyze_many(TEXTS[:3], concurrency=2)
    assert [isinstance(result, RateLimitError) for result in results].count(True) == 1


def test_progress_bar_counts_the_texts(client, capsys):
    client.analyze_many(TEXTS[:3], concurrency=2, progress=True)
    assert "3/3" in capsys.readouterr().err


def test_bad_arguments_are_refused_before_sending(client):
    with pytest.raises(TypeError, match="list of texts"):
        client.analyze_many("one text")
    with pytest.raises(ValueError, match="concurrency must be 1 or more"):
        client.analyze_many(TEXTS, concurrency=0)
