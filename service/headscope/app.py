"""The app factory: `create_app(settings)` builds a FastAPI app whose lifespan loads the runtime."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from headscope import __version__
from headscope.analysis.pool import AnalysisPool, HeapTrimmer, WriteBacklog
from headscope.api.deps import bearer_scheme
from headscope.api.guards import install_middleware
from headscope.api.lean import LeanRoutes
from headscope.api.responses import response_for
from headscope.api.routes import ablation, analysis, corpus, figures, health, jobs, model, probes
from headscope.errors import HeadscopeError
from headscope.schemas import ErrorResponse
from headscope.settings import Settings
from headscope.viewer import install_viewer

log = logging.getLogger("headscope")

# Every route documents the envelope for the errors it can return.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Empty text or malformed JSON.",
        401: "Missing or wrong API key (only when the server has one).",
        413: "Text over the token limit, body over the size limit, or a response estimated "
        "over max_response_bytes.",
        422: "Unknown or repeated layer/head, or an invalid field.",
        429: "Too many analyses running or queued; see Retry-After.",
        503: "Not ready (model loading), or probes unavailable.",
    }.items()
}


def install_error_handlers(app: FastAPI) -> None:
    """Every error FastAPI meets is answered by the one envelope mapping (api.responses)."""

    async def handle(_: Request, error: Exception) -> Response:
        return response_for(error)

    for error_type in (HeadscopeError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(error_type, handle)


def create_app(settings: Settings | None = None, runtime=None) -> FastAPI:
    """Build the app. With `runtime` given (tests), the lifespan reuses it instead of loading."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = AnalysisPool(
            settings.max_concurrency,
            settings.max_queue,
            HeapTrimmer(settings.heap_trim_interval),
            write_backlog=app.state.write_backlog,
            max_unsent_bytes=settings.max_unsent_response_bytes,
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
        # In a thread, so the event loop keeps writing the last answers meanwhile.
        await asyncio.to_thread(app.state.pool.shutdown)
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
    # Response bytes waiting for slow clients: the HTTP protocol fills it, admission reads it.
    app.state.write_backlog = WriteBacklog()
    install_error_handlers(app)
    app.include_router(health.router)
    # The key itself is checked by ApiKeyMiddleware, the one check; the dependency declares the
    # scheme in the OpenAPI document.
    documented_auth = [Depends(bearer_scheme)]
    for router in (
        model.router,
        analysis.router,
        ablation.router,
        corpus.router,
        jobs.router,
        figures.router,
        probes.router,
    ):
        app.include_router(router, dependencies=documented_auth)
    # Innermost of the middleware, so every guard acts first.
    app.add_middleware(LeanRoutes, routes=analysis.LEAN_ROUTES)
    install_middleware(app, settings)
    install_viewer(app)
    return app
