"""Configuration: HEADSCOPE_URL / HEADSCOPE_API_KEY fallbacks, the bearer header, and an import
that pulls in neither torch nor FastAPI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from headscope_client import DEFAULT_BASE_URL, AsyncClient, AuthenticationError, Client
from tests.client.conftest import CountingTransport


def test_base_url_comes_from_the_argument_then_the_env_then_the_default(live_server, monkeypatch):
    monkeypatch.delenv("HEADSCOPE_URL", raising=False)
    with Client() as client:
        assert client.base_url == DEFAULT_BASE_URL == "http://127.0.0.1:8000"

    monkeypatch.setenv("HEADSCOPE_URL", live_server + "/")
    with Client() as client:
        assert client.base_url == live_server
        assert client.health().status == "ok"
    with Client("http://127.0.0.1:1") as client:
        assert client.base_url == "http://127.0.0.1:1"


def test_api_key_from_the_env_is_sent_as_a_bearer_token(keyed_server, monkeypatch):
    base_url, key = keyed_server
    monkeypatch.setenv("HEADSCOPE_URL", base_url)
    monkeypatch.setenv("HEADSCOPE_API_KEY", key)
    transport = CountingTransport()
    with Client(transport=transport) as client:
        assert client.model().n_layers == 8
        assert key not in repr(client)
    assert transport.requests[0].headers["authorization"] == f"Bearer {key}"

    # An explicit key wins over the env.
    with Client(api_key="wrong") as client, pytest.raises(AuthenticationError):
        client.model()


async def test_async_client_uses_the_same_fallbacks(keyed_server, monkeypatch):
    base_url, key = keyed_server
    monkeypatch.setenv("HEADSCOPE_URL", base_url)
    monkeypatch.setenv("HEADSCOPE_API_KEY", key)
    async with AsyncClient() as client:
        assert (await client.model()).n_heads == 16


def test_health_needs_no_key(keyed_server, monkeypatch):
    monkeypatch.delenv("HEADSCOPE_API_KEY", raising=False)
    base_url, _ = keyed_server
    with Client(base_url) as client:
        assert client.health().status == "ok"


def test_importing_the_client_pulls_in_no_torch_fastapi_or_numpy():
    heavy = ["torch", "transformers", "fastapi", "starlette", "uvicorn", "numpy", "pandas"]
    code = (
        "import json, sys, headscope_client\n"
        "from headscope_client import Client, AsyncClient\n"
        f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(output) == []
