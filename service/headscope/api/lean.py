"""The busiest routes' successful requests, answered without FastAPI's per-request machinery.

Under 8 concurrent clients, FastAPI's middleware chain, routing, dependency solving and body
parsing were about half of the event loop's time for a /v1/analyze request, time the analysis
threads then wait for the GIL. `LeanRoutes` sits inside the request guards (header limit, API
key, body size), so they apply as before, and answers a POST to a route of
`headscope.api.routes.analysis.LEAN_ROUTES` itself when the request is one FastAPI would answer
200: a JSON body that parses and that the route's request model accepts, and an analysis that
succeeds. It calls the route's own function, so the response is the same bytes.

Anything else is handed to FastAPI as it came (the body replayed): another content type, a body
that does not parse or validate, and any error while analysing, which FastAPI then meets again
and answers as always. Failure paths are never duplicated here.
"""

from __future__ import annotations

import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headscope.api.guards import app_path, header
from headscope.api.routes.analysis import LEAN_ROUTES


class LeanRoutes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST":
            route = LEAN_ROUTES.get(app_path(scope))
        content_type = header(scope, b"content-type") or b""
        if route is None or content_type.split(b";")[0].strip().lower() != b"application/json":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        answer = await self._answer(scope, route, body)
        if answer is None:
            await self.app(scope, self._replay(body, receive), send)
            return
        content, media_type = answer
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

    @staticmethod
    async def _answer(scope: Scope, route, body: bytes) -> tuple[bytes, str] | None:
        model, respond = route
        state = scope["app"].state
        runtime, pool = getattr(state, "runtime", None), getattr(state, "pool", None)
        if runtime is None or pool is None:
            return None
        try:
            fields = orjson.loads(body)
            if not isinstance(fields, dict):
                return None
            request = model.model_validate(fields)
        except (orjson.JSONDecodeError, ValidationError):
            return None
        accept = header(scope, b"accept")
        try:
            return await respond(
                runtime, pool, request, accept.decode("latin-1") if accept is not None else None
            )
        except Exception:  # noqa: BLE001 - FastAPI meets it again and answers as always
            return None

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay
