"""Tagging, per-head activity and attention patterns for one text."""

from __future__ import annotations

from fastapi import APIRouter

from headscope.deps import PoolDep, RuntimeDep
from headscope.schemas import (
    ActivityRequest,
    ActivityResponse,
    AnalyzeRequest,
    AnalyzeResponse,
    AttentionRequest,
    AttentionResponse,
    TagRequest,
    TagResponse,
)

router = APIRouter(prefix="/v1", tags=["analysis"])


@router.post("/tag", response_model=TagResponse)
async def tag(request: TagRequest, runtime: RuntimeDep, pool: PoolDep) -> TagResponse:
    """Model tokens of the text, each with the Penn Treebank tag of its word."""
    return await pool.run(runtime.tag, request)


@router.post("/activity", response_model=ActivityResponse)
async def activity(
    request: ActivityRequest, runtime: RuntimeDep, pool: PoolDep
) -> ActivityResponse:
    """Activity (L2 norm of the head's residual contribution) per layer, head and token."""
    return await pool.run(runtime.activity, request)


@router.post("/attention", response_model=AttentionResponse)
async def attention(
    request: AttentionRequest, runtime: RuntimeDep, pool: PoolDep
) -> AttentionResponse:
    """Attention pattern of one head: all query rows, or one row."""
    return await pool.run(runtime.attention, request)


@router.post("/analyze", response_model=AnalyzeResponse)
async def analyze(request: AnalyzeRequest, runtime: RuntimeDep, pool: PoolDep) -> AnalyzeResponse:
    """Tags, every head's activity and chosen heads' patterns in one call, for a viewer."""
    return await pool.run(runtime.analyze, request)
