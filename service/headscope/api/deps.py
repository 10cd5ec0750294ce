"""FastAPI dependencies: the runtime, the analysis pool, and the API key check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from headscope.analysis.pool import AnalysisPool
from headscope.analysis.service import Runtime
from headscope.api.guards import bearer_key_matches
from headscope.errors import NotReady, Unauthorized

# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in a worker thread, a round trip per request that, under load, queues behind the
# analyses and slows every answer, health checks included.

# Declares the bearer scheme in the OpenAPI document (the docs' "Authorize" button); the check
# itself reads the raw header, so a malformed one is a 401, never a different error.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="Needed only when the server has an API key (HEADSCOPE_API_KEY).",
)


async def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise NotReady("The model is not loaded yet.", headers={"Retry-After": "1"})
    return runtime


async def get_pool(request: Request) -> AnalysisPool:
    return request.app.state.pool


async def require_api_key(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """Second line behind ApiKeyMiddleware (which answers first): same key, same check."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    if not bearer_key_matches(request.headers.get("authorization"), expected.get_secret_value()):
        raise Unauthorized(
            "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PoolDep = Annotated[AnalysisPool, Depends(get_pool)]
