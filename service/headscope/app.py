"""The app factory: `create_app(settings)` builds a FastAPI app whose lifespan loads the runtime."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from headscope import __version__
from headscope.analysis.pool import AnalysisPool, HeapTrimmer
from headscope.api.deps import require_api_key
from headscope.api.guards import install_middleware
from headscope.api.lean import LeanRoutes
from headscope.api.routes import analysis, corpus, figures, health, model, probes
from headscope.errors import HeadscopeError
from headscope.schemas import ErrorResponse
from headscope.settings import Settings
from headscope.viewer import install_viewer

log = logging.getLogger("headscope")

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    503: "unavailable",
}

# Every route documents the envelope for the errors it can return.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Empty text or malformed JSON.",
        401: "Missing or wrong API key (only when the server has one).",
        413: "Text over the token limit, or body over the size limit.",
        422: "Unknown layer/head or an invalid field.",
        429: "Too many analyses running or queued; see Retry-After.",
        503: "Not ready (model loading), or probes unavailable.",
    }.items()
}


def envelope(
    status: int, code: str, message: str, detail: Any = None, headers=None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "detail": detail}},
        status_code=status,
        headers=headers,
    )


# FastAPI's words when the body is not parseable JSON at all (bad UTF-8, nesting deeper than the
# parser's recursion limit, an integer of thousands of digits).
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"


def _printable(part: object, limit: int = 100) -> str:
    # A location can hold a caller's field name: keep it short and encodable (a lone surrogate
    # in it would otherwise break the UTF-8 response and turn a 422 into a 500).
    text = str(part)[:limit]
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _validation_detail(error: RequestValidationError) -> list[dict[str, Any]]:
    # Only location, message and type: echoing the input could be huge or not JSON-safe.
    return [
        {
            "loc": [_printable(part) for part in item.get("loc", ())],
            "msg": item.get("msg", ""),
            "type": item.get("type", ""),
        }
        for item in error.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HeadscopeError)
    async def domain_error(_: Request, error: HeadscopeError) -> JSONResponse:
        return envelope(error.status_code, error.code, error.message, error.detail, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        detail = _validation_detail(error)
        if any(item["type"] == "json_invalid" for item in detail):
            return envelope(400, "invalid_json", "Request body is not valid JSON.", detail)
        if any(
            item["type"] == "model_attributes_type" and item["loc"] == ["body"] for item in detail
        ):
            return envelope(
                422,
                "invalid_request",
                "Request body must be a JSON object (send Content-Type: application/json).",
                detail,
            )
        summary = "; ".join(f"{'.'.join(item['loc'])}: {item['msg']}" for item in detail[:5])
        return envelope(422, "invalid_request", f"Invalid request: {summary}", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 400 and error.detail == FASTAPI_BODY_PARSE_ERROR:
            return envelope(
                400,
                "invalid_json",
                "Request body is not valid JSON (invalid UTF-8, nested too deeply, or a number "
                "too long to parse).",
            )
        # Middleware raising from inside the body stream attaches its own code and detail.
        code = getattr(error, "error_code", None) or STATUS_CODES.get(
            error.status_code, "http_error"
        )
        detail = getattr(error, "error_detail", None)
        return envelope(error.status_code, code, str(error.detail), detail, error.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, error: Exception) -> JSONResponse:
        log.exception("Unhandled error")
        return envelope(500, "internal_error", "Internal server error; see the server log.")


def create_app(settings: Settings | None = None, runtime=None) -> FastAPI:
    """Build the app. With `runtime` given (tests), the lifespan reuses it instead of loading."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = AnalysisPool(
            settings.max_concurrency,
            settings.max_queue,
            HeapTrimmer(settings.heap_trim_interval),
        )
        if runtime is not None:
            app.state.runtime = runtime
        else:
            from headscope.analysis.service import load_runtime

            app.state.runtime = load_runtime(settings)
        if settings.api_key is None:
            log.warning("No API key set: the API is unauthenticated (bound to %s)", settings.host)
        # What is loaded by now lives as long as the server: full collections need not walk it
        # again and again (they were ~2-3% of the CPU under load).
        gc.freeze()
        yield
        app.state.pool.shutdown()
        if runtime is None:
            app.state.runtime.close()

    app = FastAPI(
        title="headscope",
        version=__version__,
        summary="Look inside the attention heads of tiny GPT-Neo transformers.",
        description="Per-head activity, attention patterns, POS tags and probes for "
        "TinyStories-style GPT-Neo models. Errors always come as "
        '`{"error": {"code", "message", "detail"}}`.',
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        docs_url=None,  # /docs and /redoc: served offline by install_viewer
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.runtime = None
    install_error_handlers(app)
    app.include_router(health.router)
    protected = [Depends(require_api_key)]
    for router in (model.router, analysis.router, corpus.router, figures.router, probes.router):
        app.include_router(router, dependencies=protected)
    # The lean path sits innermost, behind every guard that install_middleware adds.
    app.add_middleware(LeanRoutes)
    install_middleware(app, settings)
    install_viewer(app)
    return app
