"""FastAPI dependencies: the runtime, the analysis pool, and the API key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from headscope.concurrency import AnalysisPool
from headscope.errors import NotReady, Unauthorized
from headscope.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise NotReady("The model is not loaded yet.", headers={"Retry-After": "1"})
    return runtime


def get_pool(request: Request) -> AnalysisPool:
    return request.app.state.pool


def require_api_key(request: Request) -> None:
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    # Constant-time comparison, so response timing does not reveal how much of a key matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), expected.get_secret_value().encode()
    ):
        raise Unauthorized(
            "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PoolDep = Annotated[AnalysisPool, Depends(get_pool)]
