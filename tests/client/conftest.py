"""Fixtures for the client tests: clients on the live server, and small real servers on 127.0.0.1
that misbehave on purpose (a scripted app) or need a key."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.helpers import ServerThread


class CountingTransport(httpx.BaseTransport):
    """A real HTTP transport that remembers every request it sends (retries included)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncCountingTransport(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Step:
    """One scripted answer: status, JSON body (or raw text), headers, and a delay before it."""

    status: int = 200
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    sleep: float = 0.0


class ScriptedServer:
    """A real uvicorn server whose answers per path are scripted by the test.

    Each request to a scripted path takes the next step (the last one repeats) and is logged with
    its arrival time, so tests count retries and measure the waits between them.
    """

    def __init__(self) -> None:
        self.script: dict[str, list[Step]] = {}
        self.log: list[tuple[str, str, float, dict[str, str]]] = []
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def scripted(path: str, request: Request) -> Response:
            path = "/" + path
            self.log.append((request.method, path, time.monotonic(), dict(request.headers)))
            steps = self.script.get(path)
            if not steps and path == "/readyz":  # ready unless scripted otherwise
                return JSONResponse({"ready": True})
            if not steps:
                return JSONResponse({"error": {"code": "not_scripted", "message": path}}, 404)
            step = steps.pop(0) if len(steps) > 1 else steps[0]
            if step.sleep:
                await asyncio.sleep(step.sleep)
            if step.text is not None:
                return Response(step.text, step.status, step.headers, media_type="text/html")
            return JSONResponse(step.body, step.status, step.headers)

        self.thread = ServerThread(app)

    @property
    def base_url(self) -> str:
        return self.thread.base_url

    def reset(self, script: dict[str, list[Step]]) -> None:
        self.script = {path: list(steps) for path, steps in script.items()}
        self.log.clear()

    def hits(self, path: str) -> list[float]:
        return [at for _, logged, at, _ in self.log if logged == path]


@pytest.fixture(scope="session")
def scripted_server():
    server = ScriptedServer()
    with server.thread:
        yield server


@pytest.fixture()
def scripted(scripted_server):
    scripted_server.reset({})
    return scripted_server


@pytest.fixture(scope="session")
def keyed_server(settings, runtime):
    """The stand-in behind an API key: (base_url, key)."""
    from pydantic import SecretStr

    from headscope.app import create_app

    keyed_settings = settings.model_copy(update={"api_key": SecretStr("s3cret-key")})
    with ServerThread(create_app(keyed_settings, runtime=runtime)) as server:
        yield server.base_url, "s3cret-key"


@pytest.fixture()
def client(live_server, monkeypatch):
    from headscope_client import Client

    monkeypatch.delenv("HEADSCOPE_API_KEY", raising=False)
    with Client(live_server) as client:
        yield client


@pytest.fixture()
async def aclient(live_server, monkeypatch):
    from headscope_client import AsyncClient

    monkeypatch.delenv("HEADSCOPE_API_KEY", raising=False)
    async with AsyncClient(live_server) as client:
        yield client


@pytest.fixture(scope="session")
def corpus_server(settings, runtime):
    """The stand-in with the TinyStories sample as its corpus (no probes): its base URL."""
    from headscope.app import create_app
    from tests.helpers import CORPUS

    corpus_settings = settings.model_copy(update={"corpus": str(CORPUS)})
    with ServerThread(create_app(corpus_settings, runtime=runtime)) as server:
        yield server.base_url


@pytest.fixture(scope="session")
def probes_server(settings, probes_runtime):
    """The stand-in with the session's small probe run loaded and the TinyStories sample as its
    corpus: its base URL."""
    from headscope.app import create_app
    from tests.helpers import CORPUS

    probes_settings = settings.model_copy(update={"corpus": str(CORPUS)})
    with ServerThread(create_app(probes_settings, runtime=probes_runtime)) as server:
        yield server.base_url


@pytest.fixture()
def probes_client(probes_server, monkeypatch):
    from headscope_client import Client

    monkeypatch.delenv("HEADSCOPE_API_KEY", raising=False)
    with Client(probes_server) as client:
        yield client
