"""FastAPI dependencies: the runtime and the analysis pool (bound to the request)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from starlette.types import Receive

from headscope.analysis.pool import AnalysisPool, Awaiting
from headscope.analysis.service import Runtime
from headscope.errors import NotReady

T = TypeVar("T")

# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in a worker thread, a round trip per request that, under load, queues behind the
# analyses and slows every answer, health checks included.

# Declares the bearer scheme in the OpenAPI document (the docs' "Authorize" button). The key is
# checked by ApiKeyMiddleware alone (headscope.api.guards), before FastAPI sees the request.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="Needed only when the server has an API key (HEADSCOPE_API_KEY).",
)


async def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise NotReady("The model is not loaded yet.", headers={"Retry-After": "1"})
    return runtime


async def _disconnect(receive: Receive) -> None:
    """Returns when the client has closed its connection (the body is read by then)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class RequestPool:
    """The analysis pool as one request sees it: if its client goes away while the analysis
    waits or runs, the wait ends and queued work is dropped (nobody would read the answer)."""

    def __init__(self, pool: AnalysisPool, receive: Receive) -> None:
        self.pool = pool
        self.receive = receive

    async def run(self, function: Callable[..., T | Awaiting[T]], *args, **kwargs) -> T:
        gone = asyncio.ensure_future(_disconnect(self.receive))
        try:
            return await self.pool.run(function, *args, disconnected=gone, **kwargs)
        finally:
            gone.cancel()


async def get_pool(request: Request) -> RequestPool:
    return RequestPool(request.app.state.pool, request.receive)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PoolDep = Annotated[RequestPool, Depends(get_pool)]
