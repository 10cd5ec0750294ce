"""Analyses over many sequences: attention by tag, activity by tag, quotations, head ranking;
and one sequence drawn from the corpus."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from headscope.analysis.corpus import CorpusAnalysis
from headscope.api.deps import PoolDep, RuntimeDep
from headscope.schemas import (
    ActivityByTagRequest,
    ActivityByTagResponse,
    AttentionByTagRequest,
    AttentionByTagResponse,
    CorpusSequenceQuery,
    CorpusSequenceResponse,
    HeadRankQuery,
    HeadRankResponse,
    QuotesRequest,
    QuotesResponse,
)

router = APIRouter(prefix="/v1", tags=["corpus"])

# "hit" when the result came from the corpus cache, "miss" when it was computed.
CACHE_HEADER = "X-Headscope-Cache"


async def get_corpus_analysis(request: Request, runtime: RuntimeDep) -> CorpusAnalysis:
    # async, so it runs on the event loop: one analysis (and one cache) per app, never two.
    state = request.app.state
    analysis = getattr(state, "corpus_analysis", None)
    if analysis is None or analysis.runtime is not runtime:
        analysis = state.corpus_analysis = CorpusAnalysis(runtime, state.settings)
    return analysis


CorpusAnalysisDep = Annotated[CorpusAnalysis, Depends(get_corpus_analysis)]


@router.post("/corpus/attention-by-tag", response_model=AttentionByTagResponse)
async def attention_by_tag(
    request: AttentionByTagRequest, analysis: CorpusAnalysisDep, pool: PoolDep, response: Response
) -> AttentionByTagResponse:
    """Where tokens of one tag put one head's attention, by tag (or who attends to a tag)."""
    result, hit = await pool.run(analysis.attention_by_tag_cached, request)
    response.headers[CACHE_HEADER] = "hit" if hit else "miss"
    return result


@router.post("/corpus/activity-by-tag", response_model=ActivityByTagResponse)
async def activity_by_tag(
    request: ActivityByTagRequest, analysis: CorpusAnalysisDep, pool: PoolDep, response: Response
) -> ActivityByTagResponse:
    """Every head's mean activity on, before or after a tag, against its overall mean."""
    result, hit = await pool.run(analysis.activity_by_tag_cached, request)
    response.headers[CACHE_HEADER] = "hit" if hit else "miss"
    return result


@router.post("/corpus/quotes", response_model=QuotesResponse)
async def quotes(
    request: QuotesRequest, analysis: CorpusAnalysisDep, pool: PoolDep, response: Response
) -> QuotesResponse:
    """Every head's activity inside vs. outside quotations, and attention to the opening quote."""
    result, hit = await pool.run(analysis.quotes_cached, request)
    response.headers[CACHE_HEADER] = "hit" if hit else "miss"
    return result


@router.get("/corpus/sequence", response_model=CorpusSequenceResponse)
async def corpus_sequence(
    query: Annotated[CorpusSequenceQuery, Query()], analysis: CorpusAnalysisDep, pool: PoolDep
) -> CorpusSequenceResponse:
    """One sequence drawn from the server's corpus by seed: a story to look at."""
    return await pool.run(analysis.sequence, query)


@router.get("/heads/rank", response_model=HeadRankResponse, tags=["heads"])
async def rank_heads(
    query: Annotated[HeadRankQuery, Query()], analysis: CorpusAnalysisDep, pool: PoolDep
) -> HeadRankResponse:
    """Heads ranked by probe score for a tag, by activity lift near it, and by both."""
    return await pool.run(analysis.rank_heads, query)
