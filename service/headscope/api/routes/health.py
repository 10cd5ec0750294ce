"""Liveness and readiness."""

from __future__ import annotations

from pathlib import Path, PurePath

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from headscope.errors import NotReady
from headscope.schemas import ErrorResponse, HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


def public_model_name(model_id: str) -> str:
    """What an unauthenticated caller may learn of the model: a hub id as it is, a local
    directory by its name only (never the server's paths)."""
    path = PurePath(model_id)
    if path.is_absolute() or model_id.startswith((".", "~")) or Path(model_id).exists():
        return path.name
    return model_id


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is up and answering."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ErrorResponse}})
async def readyz(request: Request) -> JSONResponse:
    """The model is loaded (503 with the error envelope until then); says whether probes are."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise NotReady("The model is still loading.", headers={"Retry-After": "1"})
    pool = getattr(request.app.state, "pool", None)
    if pool is not None and pool.draining:
        raise NotReady("The server is shutting down.", headers={"Retry-After": "1"})
    body = ReadyResponse(
        ready=True,
        model_id=public_model_name(runtime.files.model_id),
        probes="loaded" if runtime.probes is not None else "unavailable",
        probes_reason=None if runtime.probes is not None else runtime.probes_reason,
        tagger=runtime.tagger.health,
    )
    return JSONResponse(body.model_dump())
