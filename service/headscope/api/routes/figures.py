"""The case-study figures as PNG images."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from headscope.analysis.figures import Figures
from headscope.api.deps import PoolDep, RuntimeDep
from headscope.api.routes.corpus import CorpusAnalysisDep
from headscope.schemas import (
    ActivityByTagFigureQuery,
    ActivityFigureQuery,
    AttentionByTagFigureQuery,
    AttentionFigureQuery,
    QuotesFigureQuery,
)

router = APIRouter(prefix="/v1/figures", tags=["figures"])

PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "A PNG image of the asked size."}
}


async def get_figures(
    request: Request, runtime: RuntimeDep, analysis: CorpusAnalysisDep
) -> Figures:
    state = request.app.state
    figures = getattr(state, "figures", None)
    if figures is None or figures.analysis is not analysis:
        figures = state.figures = Figures(runtime, analysis)
    return figures


FiguresDep = Annotated[Figures, Depends(get_figures)]


def png(data: bytes) -> Response:
    return Response(content=data, media_type="image/png")


@router.get("/activity.png", response_class=Response, responses=PNG_RESPONSE)
async def activity_figure(
    query: Annotated[ActivityFigureQuery, Query()], figures: FiguresDep, pool: PoolDep
) -> Response:
    """The text with each token shaded by one head's activity, the strongest in bold."""
    return png(await pool.run(figures.activity, query))


@router.get("/attention.png", response_class=Response, responses=PNG_RESPONSE)
async def attention_figure(
    query: Annotated[AttentionFigureQuery, Query()], figures: FiguresDep, pool: PoolDep
) -> Response:
    """The text with each token shaded by one query token's attention weight on it."""
    return png(await pool.run(figures.attention, query))


@router.get("/attention-by-tag.png", response_class=Response, responses=PNG_RESPONSE)
async def attention_by_tag_figure(
    query: Annotated[AttentionByTagFigureQuery, Query()], figures: FiguresDep, pool: PoolDep
) -> Response:
    """Bar chart of POST /v1/corpus/attention-by-tag, against uniform attention."""
    return png(await pool.run(figures.attention_by_tag, query))


@router.get("/activity-by-tag.png", response_class=Response, responses=PNG_RESPONSE)
async def activity_by_tag_figure(
    query: Annotated[ActivityByTagFigureQuery, Query()], figures: FiguresDep, pool: PoolDep
) -> Response:
    """Bar chart of POST /v1/corpus/activity-by-tag for a layer's heads or the top heads."""
    return png(await pool.run(figures.activity_by_tag, query))


@router.get("/quotes.png", response_class=Response, responses=PNG_RESPONSE)
async def quotes_figure(
    query: Annotated[QuotesFigureQuery, Query()], figures: FiguresDep, pool: PoolDep
) -> Response:
    """Bar charts of POST /v1/corpus/quotes: activity inside vs. outside, attention to opening."""
    return png(await pool.run(figures.quotes, query))
