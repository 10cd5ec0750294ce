"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from headscope.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is up and answering."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(request: Request) -> JSONResponse:
    """The model is loaded (503 until then); also says whether probes are available."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        body = ReadyResponse(ready=False, probes_reason="The model is still loading.")
        return JSONResponse(body.model_dump(), status_code=503)
    body = ReadyResponse(
        ready=True,
        model_id=runtime.files.model_id,
        probes="loaded" if runtime.probes is not None else "unavailable",
        probes_reason=None if runtime.probes is not None else runtime.probes_reason,
    )
    return JSONResponse(body.model_dump())
