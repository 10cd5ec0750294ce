"""Tagging, per-head activity and attention patterns for one text.

Handlers return bytes the runtime encoded in the analysis pool (headscope.encoding): JSON by
default, safetensors or npy when the Accept header asks. The response models stay declared, so
the OpenAPI docs describe the JSON exactly as before.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from headscope.analysis.service import Runtime
from headscope.api.costs import check_response_size
from headscope.api.deps import PoolDep, RequestPool, RuntimeDep
from headscope.api.lean import LeanRoute
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
from headscope.settings import Settings

router = APIRouter(prefix="/v1", tags=["analysis"])

BINARY = {"schema": {"type": "string", "format": "binary"}}
NOT_ACCEPTABLE: dict[int | str, dict[str, Any]] = {
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


def response_size(
    settings: Settings, runtime: Runtime, request, media_type: str, per_token: int, per_pair: int
) -> None:
    """413 before any work when the response would be over `max_response_bytes`."""
    check_response_size(
        text=request.text,
        numbers_per_token=per_token,
        numbers_per_token_pair=per_pair,
        media_type=media_type,
        dtype=request.dtype,
        decimals=request.decimals,
        max_tokens=runtime.max_tokens,
        max_response_bytes=settings.max_response_bytes,
    )


async def activity_answer(
    settings: Settings,
    runtime: Runtime,
    pool: RequestPool,
    request: ActivityRequest,
    accept: str | None,
) -> tuple[bytes, str]:
    """The encoded activity and its media type (the route's work, shared with the lean path)."""
    media_type = negotiate(accept, has_single_array=True)
    g = runtime.geometry
    # Distinct entries (the schema's rule) that exist in the model: at most its geometry.
    layers = min(len(request.layers), g.n_layers) if request.layers is not None else g.n_layers
    heads = min(len(request.heads), g.n_heads) if request.heads is not None else g.n_heads
    response_size(settings, runtime, request, media_type, layers * heads, 0)
    body = await pool.run(
        runtime.encoded, runtime.activity_payload, request, media_type, "activity"
    )
    return body, media_type


@router.post(
    "/activity", response_model=ActivityResponse, responses=binary_responses(SAFETENSORS, NPY)
)
async def activity(
    request: ActivityRequest, runtime: RuntimeDep, pool: PoolDep, http: Request
) -> Response:
    """Activity (L2 norm of the head's residual contribution) per layer, head and token."""
    body, media_type = await activity_answer(
        http.app.state.settings, runtime, pool, request, http.headers.get("accept")
    )
    return Response(body, media_type=media_type)


@router.post(
    "/attention", response_model=AttentionResponse, responses=binary_responses(SAFETENSORS, NPY)
)
async def attention(
    request: AttentionRequest, runtime: RuntimeDep, pool: PoolDep, http: Request
) -> Response:
    """Attention pattern of one head: all query rows, or one row."""
    media_type = negotiate(http.headers.get("accept"), has_single_array=True)
    one_row = request.query is not None
    response_size(
        http.app.state.settings, runtime, request, media_type, int(one_row), int(not one_row)
    )
    body = await pool.run(
        runtime.encoded, runtime.attention_payload, request, media_type, "pattern"
    )
    return Response(body, media_type=media_type)


async def analyze_answer(
    settings: Settings,
    runtime: Runtime,
    pool: RequestPool,
    request: AnalyzeRequest,
    accept: str | None,
) -> tuple[bytes, str]:
    """The encoded analysis and its media type (the route's work, shared with the lean path)."""
    media_type = negotiate(accept, has_single_array=False)
    g = runtime.geometry
    heads = g.n_layers * g.n_heads
    response_size(settings, runtime, request, media_type, heads, min(len(request.patterns), heads))
    runtime.prefetch_tags(request.text)
    body = await pool.run(runtime.encoded, runtime.analyze_payload, request, media_type)
    return body, media_type


@router.post("/analyze", response_model=AnalyzeResponse, responses=binary_responses(SAFETENSORS))
async def analyze(
    request: AnalyzeRequest, runtime: RuntimeDep, pool: PoolDep, http: Request
) -> Response:
    """Tags, every head's activity and chosen heads' patterns in one call, for a viewer."""
    body, media_type = await analyze_answer(
        http.app.state.settings, runtime, pool, request, http.headers.get("accept")
    )
    return Response(body, media_type=media_type)


# The busiest routes, also answered by the lean path (headscope.api.lean, wired in by app.py):
# path -> (request model, answer function).
LEAN_ROUTES: dict[str, LeanRoute] = {
    "/v1/activity": (ActivityRequest, activity_answer),
    "/v1/analyze": (AnalyzeRequest, analyze_answer),
}
