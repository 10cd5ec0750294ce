"""What model is loaded."""

from __future__ import annotations

from fastapi import APIRouter

from headscope.api.deps import RuntimeDep
from headscope.schemas import ModelInfo

router = APIRouter(prefix="/v1", tags=["model"])


@router.get("/model", response_model=ModelInfo)
async def get_model(runtime: RuntimeDep) -> ModelInfo:
    """The loaded model's geometry, token limit, attention layout and weights fingerprint."""
    return runtime.info()
