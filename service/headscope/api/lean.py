"""The busiest routes' requests, answered without FastAPI's per-request machinery.

Under 8 concurrent clients, FastAPI's middleware chain, routing, dependency solving and body
parsing are a large share of the event loop's time for a /v1/analyze request, time the analysis
threads then wait for the GIL. `LeanRoutes` sits inside the request guards (header limit, API
key, body size), so they apply as before, and answers a JSON POST to one of its routes itself:
it parses and validates the body with the route's own request model and calls the route's own
answer function, so a success is the same bytes as FastAPI's answer, and an error met while
answering (406, 413, 429, 503, ...) is answered once, here, by the one envelope mapping.

A body that does not parse or validate is handed to FastAPI unchanged (replayed), before any
work is done, so its 400/422 reads exactly as FastAPI words it. Nothing runs twice. app.py wires
this in with the routes' table; this module imports no route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import orjson
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headscope.api.deps import RequestPool
from headscope.api.guards import app_path, header
from headscope.api.responses import response_for
from headscope.errors import NotReady

Answer = Callable[..., Awaitable[tuple[bytes, str]]]
LeanRoute = tuple[type[BaseModel], Answer]


class LeanRoutes:
    def __init__(self, app: ASGIApp, routes: Mapping[str, LeanRoute]) -> None:
        self.app = app
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.routes.get(app_path(scope))
        content_type = header(scope, b"content-type") or b""
        if route is None or content_type.split(b";")[0].strip().lower() != b"application/json":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return  # the client went away
        request_model, answer = route
        request = parsed(request_model, body)
        if request is None:
            await self.app(scope, replay(body, receive), send)
            return
        state = scope["app"].state
        accept = header(scope, b"accept")
        try:
            if state.runtime is None:
                raise NotReady("The model is not loaded yet.", headers={"Retry-After": "1"})
            content, media_type = await answer(
                state.settings,
                state.runtime,
                RequestPool(state.pool, receive),
                request,
                accept.decode("latin-1") if accept is not None else None,
            )
        except Exception as error:  # noqa: BLE001 - every error gets the one envelope
            await response_for(error)(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(content)).encode()),
                    (b"content-type", media_type.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client disconnects first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def parsed(request_model: type[BaseModel], body: bytes) -> BaseModel | None:
    """The body as the route's request model, or None where FastAPI should word the error."""
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(fields, dict):
        return None
    try:
        return request_model.model_validate(fields)
    except ValidationError:
        return None


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the already-read body once, then the connection's own messages."""
    replayed = False

    async def receive_again() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again
