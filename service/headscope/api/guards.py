"""What acts before FastAPI reads a request: header count, API key, body size; and the answer to
a request cancelled before it had one (the drain's last resort).

Each refuses with the one error envelope (headscope.api.responses) and never reads more of the
request than it needs to decide. `install_middleware` adds them in order, the outermost first:
the cancelled-answer guard, header limit, then API key (so a caller without the key learns
nothing else, and its body is never read), then body size. They import no route.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headscope.analysis.pool import RETRY_AFTER_SECONDS
from headscope.api.responses import error_response

PUBLIC_PATHS = ("/healthz", "/readyz")


def header(scope: Scope, name: bytes) -> bytes | None:
    """The request's first header called `name` (lower case), or None."""
    return next((value for key, value in scope.get("headers", ()) if key == name), None)


def app_path(scope: Scope) -> str:
    """The request's path within the app (without the root path it is mounted under)."""
    path = scope["path"]
    root_path = scope.get("root_path", "")
    return path[len(root_path) :] if root_path and path.startswith(root_path) else path


def bearer_key_matches(authorization: bytes | str | None, expected: str) -> bool:
    """True when `authorization` is `Bearer <expected>`; the key is compared in constant time."""
    if not authorization:
        return False
    if isinstance(authorization, str):
        authorization = authorization.encode("latin-1", errors="replace")
    scheme, _, presented = authorization.strip().partition(b" ")
    # Constant time, so response timing does not reveal how much of a guessed key was right;
    # comparing digests also hides the key's length.
    same_key = hmac.compare_digest(
        hashlib.sha256(presented.strip()).digest(), hashlib.sha256(expected.encode()).digest()
    )
    return scheme.lower() == b"bearer" and same_key


class HeaderLimitMiddleware:
    """Refuse a request with more than `max_headers` headers, or more than `max_header_bytes` of
    them, with 431.

    The protocol bounds only what it buffers while a head is incomplete (a head that arrives in
    one read passes whatever its size), so both limits are enforced exactly here; and a
    header count costs the app per-header work however short each header is.
    """

    def __init__(self, app: ASGIApp, max_headers: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        size = sum(len(name) + len(value) for name, value in headers)
        if len(headers) > self.max_headers:
            message = f"Request has {len(headers)} headers; the limit is {self.max_headers}."
            code = "too_many_headers"
        elif size > self.max_header_bytes:
            message = f"Request headers total {size} bytes; the limit is {self.max_header_bytes}."
            code = "headers_too_large"
        else:
            await self.app(scope, receive, send)
            return
        detail = {
            "headers": len(headers),
            "header_bytes": size,
            "max_headers": self.max_headers,
            "max_header_bytes": self.max_header_bytes,
        }
        refusal = error_response(431, code, message, detail, {"connection": "close"})
        await refusal(scope, receive, send)


class ApiKeyMiddleware:
    """With a key configured, every path but `public_paths` needs `Authorization: Bearer <key>`.

    The API's only key check. Deny by default: a route added later is protected without anyone
    remembering to protect it, and an unknown path answers 401 rather than revealing which
    paths exist.
    """

    def __init__(self, app: ASGIApp, api_key: str | None, public_paths: Iterable[str]) -> None:
        self.app = app
        self.api_key = api_key
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if app_path(scope) in self.public_paths:
            await self.app(scope, receive, send)
            return
        if not bearer_key_matches(header(scope, b"authorization"), self.api_key):
            refusal = error_response(
                401,
                "unauthorized",
                "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                headers={"www-authenticate": "Bearer"},
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyTooLargeInStream(HTTPException):
    """Raised from inside the body stream; FastAPI passes HTTPExceptions through to the handlers."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"Request body is larger than the limit of {max_bytes} bytes.")
        self.error_code = "body_too_large"
        self.error_detail = {"max_bytes": max_bytes}


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413, by Content-Length or while streaming (chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = error_response(
            413,
            "body_too_large",
            f"Request body is larger than the limit of {self.max_bytes} bytes.",
            {"max_bytes": self.max_bytes},
            {"connection": "close"},
        )
        await refusal(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeInStream(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeInStream:
            if not response_started:
                await self._refuse(scope, receive, send)


class CancelledAnswerMiddleware:
    """A request cancelled before its answer started (the drain timeout ran out) is answered 503
    with the envelope and Retry-After, instead of uvicorn's plain-text 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if started:
                raise
            refusal = error_response(
                503,
                "unavailable",
                "The server is shutting down and could not answer in time.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS), "connection": "close"},
            )
            await refusal(scope, receive, send)


def install_middleware(app, settings) -> None:
    """Add the guards to a FastAPI app; the last one added runs first."""
    public_paths = set(PUBLIC_PATHS)
    for docs_path in (app.openapi_url, app.docs_url, app.redoc_url):
        if docs_path:
            public_paths.add(docs_path)
    if app.docs_url and app.swagger_ui_oauth2_redirect_url:
        public_paths.add(app.swagger_ui_oauth2_redirect_url)
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, api_key=api_key, public_paths=public_paths)
    app.add_middleware(
        HeaderLimitMiddleware,
        max_headers=settings.max_headers,
        max_header_bytes=settings.max_header_bytes,
    )
    app.add_middleware(CancelledAnswerMiddleware)
