"""Tagging, per-head activity and attention patterns for one text.

Handlers return bytes the runtime encoded in the analysis pool (headscope.encoding): JSON by
default, safetensors or npy when the Accept header asks. The response models stay declared, so
the OpenAPI docs describe the JSON exactly as before.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from headscope.analysis.pool import AnalysisPool
from headscope.analysis.service import Runtime
from headscope.api.deps import PoolDep, RuntimeDep
from headscope.encoding import JSON, NPY, SAFETENSORS, negotiate
from headscope.schemas import (
    ActivityRequest,
    ActivityResponse,
    AnalyzeRequest,
    AnalyzeResponse,
    AttentionRequest,
    AttentionResponse,
    ErrorResponse,
    TagRequest,
    TagResponse,
)

router = APIRouter(prefix="/v1", tags=["analysis"])

BINARY = {"schema": {"type": "string", "format": "binary"}}
NOT_ACCEPTABLE = {
    406: {"model": ErrorResponse, "description": "Accept asks only for a format not offered."}
}


def binary_responses(*media_types: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "JSON by default; "
            + " or ".join(media_types)
            + " when the Accept header asks for it.",
            "content": {media_type: BINARY for media_type in media_types},
        },
        **NOT_ACCEPTABLE,
    }


@router.post("/tag", response_model=TagResponse)
async def tag(request: TagRequest, runtime: RuntimeDep, pool: PoolDep) -> Response:
    """Model tokens of the text, each with the Penn Treebank tag of its word."""
    if request.alignment == "overlap":
        runtime.prefetch_tags(request.text)
    body = await pool.run(runtime.encoded, runtime.tag_payload, request)
    return Response(body, media_type=JSON)


@router.post(
    "/activity", response_model=ActivityResponse, responses=binary_responses(SAFETENSORS, NPY)
)
async def activity(
    request: ActivityRequest, runtime: RuntimeDep, pool: PoolDep, http: Request
) -> Response:
    """Activity (L2 norm of the head's residual contribution) per layer, head and token."""
    body, media_type = await activity_response(runtime, pool, request, http.headers.get("accept"))
    return Response(body, media_type=media_type)


@router.post(
    "/attention", response_model=AttentionResponse, responses=binary_responses(SAFETENSORS, NPY)
)
async def attention(
    request: AttentionRequest, runtime: RuntimeDep, pool: PoolDep, http: Request
) -> Response:
    """Attention pattern of one head: all query rows, or one row."""
    media_type = negotiate(http.headers.get("accept"), has_single_array=True)
    body = await pool.run(
        runtime.encoded, runtime.attention_payload, request, media_type, "pattern"
    )
    return Response(body, media_type=media_type)


@router.post("/analyze", response_model=AnalyzeResponse, responses=binary_responses(SAFETENSORS))
async def analyze(
    request: AnalyzeRequest, runtime: RuntimeDep, pool: PoolDep, http: Request
) -> Response:
    """Tags, every head's activity and chosen heads' patterns in one call, for a viewer."""
    body, media_type = await analyze_response(runtime, pool, request, http.headers.get("accept"))
    return Response(body, media_type=media_type)


# What the two busiest routes do, shared with their lean path (headscope.api.lean).


async def activity_response(
    runtime: Runtime, pool: AnalysisPool, request: ActivityRequest, accept: str | None
) -> tuple[bytes, str]:
    media_type = negotiate(accept, has_single_array=True)
    body = await pool.run(
        runtime.encoded, runtime.activity_payload, request, media_type, "activity"
    )
    return body, media_type


async def analyze_response(
    runtime: Runtime, pool: AnalysisPool, request: AnalyzeRequest, accept: str | None
) -> tuple[bytes, str]:
    media_type = negotiate(accept, has_single_array=False)
    runtime.prefetch_tags(request.text)
    body = await pool.run(runtime.encoded, runtime.analyze_payload, request, media_type)
    return body, media_type


LEAN_ROUTES = {
    "/v1/activity": (ActivityRequest, activity_response),
    "/v1/analyze": (AnalyzeRequest, analyze_response),
}
