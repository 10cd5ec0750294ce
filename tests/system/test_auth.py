"""Promise 8, auth deny by default: with an API key set, every route but /healthz, /readyz and
the docs answers 401 without the key or with a wrong one. The routes are walked from
`app.routes`, so a route added later cannot slip through."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tests.system.conftest import assert_envelope

KEY = "correct-horse-battery-staple-7f3a"
PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


@pytest.fixture(scope="module")
def keyed_app(settings, runtime):
    from pydantic import SecretStr

    from headscope.app import create_app

    app = create_app(settings.model_copy(update={"api_key": SecretStr(KEY)}), runtime=runtime)
    with TestClient(app) as client:
        yield app, client


def walk_routes(routes, prefix: str = ""):
    """(full path template, route) for every route, into included routers and mounts."""
    for route in routes:
        included = getattr(route, "original_router", None)  # newer FastAPI keeps routers nested
        if included is not None:
            yield from walk_routes(included.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "routes") and not isinstance(route, APIRoute):  # a Mount
            yield from walk_routes(route.routes, prefix + route.path)
        else:
            yield prefix + route.path, route


def every_route(app) -> list[tuple[str, str]]:
    """(method, concrete path) for every route the app serves, path parameters filled in."""
    pairs = []
    for template, route in walk_routes(app.routes):
        path = re.sub(r"\{[^}]+\}", "x", template)
        methods = sorted(getattr(route, "methods", None) or {"GET"})
        pairs += [(method, path) for method in methods]
    return pairs


def test_every_non_public_route_needs_the_key(keyed_app):
    app, client = keyed_app
    routes = every_route(app)
    api_routes = [
        path
        for path, route in walk_routes(app.routes)
        if isinstance(route, APIRoute) and path not in PUBLIC
    ]
    assert len(api_routes) >= 5  # /v1/model, tag, activity, attention, analyze at least
    # Every operation in the OpenAPI document is among the walked routes.
    documented = {
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert documented <= set(routes), documented - set(routes)
    checked = 0
    for method, path in routes:
        if path in PUBLIC:
            continue
        for headers in (
            {},
            {"authorization": "Bearer wrong-key"},
            {"authorization": f"Bearer {KEY}x"},
            {"authorization": f"Basic {KEY}"},
            {"authorization": KEY},
            {"authorization": "Bearer"},
        ):
            response = client.request(method, path, headers=headers, json={"text": "hi"})
            assert_envelope(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
            checked += 1
        # With the key, the request reaches the route (whatever it then answers).
        authorized = client.request(
            method, path, headers={"authorization": f"Bearer {KEY}"}, json={"text": "hi"}
        )
        assert authorized.status_code != 401, (method, path)
    assert checked >= 6 * len(api_routes)


def test_unknown_paths_are_401_not_404(keyed_app):
    _, client = keyed_app
    assert_envelope(client.get("/v1/does-not-exist"), 401)
    assert_envelope(client.get("/healthz/../v1/model"), 401)


def test_public_routes_and_the_key_work(keyed_app):
    _, client = keyed_app
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"):
        assert client.get(path).status_code == 200, path
    answer = client.post(
        "/v1/tag", json={"text": "A cat."}, headers={"Authorization": f"bearer  {KEY} "}
    )
    assert answer.status_code == 200
    spec = client.get("/openapi.json").json()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_a_blank_key_means_no_key():
    from headscope.settings import Settings

    assert Settings(api_key="  ").api_key is None


def test_default_bind_is_loopback():
    from headscope.cli import uvicorn_config
    from headscope.settings import Settings

    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert uvicorn_config(None, settings).host == "127.0.0.1"
    # The startup log line about running unauthenticated is checked on a real process in
    # test_process.py::test_sigterm_drains_in_flight_requests_then_exits.
