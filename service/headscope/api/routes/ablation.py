"""Does a head matter? Ablation on one text and over the corpus, and per-head scores on
repeated random tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from headscope.analysis.ablation import AblationAnalysis
from headscope.api.deps import PoolDep
from headscope.api.routes.corpus import CACHE_HEADER, CorpusAnalysisDep
from headscope.api.routes.jobs import UNKNOWN_JOB, JobId, JobResultsDep
from headscope.schemas import (
    HEAD_SCORES_METHOD,
    AblateRequest,
    AblateResponse,
    CorpusAblationRequest,
    CorpusAblationResponse,
    CorpusJobAblationQuery,
    HeadScoresQuery,
    HeadScoresResponse,
)

router = APIRouter(prefix="/v1", tags=["ablation"])


async def get_ablation_analysis(request: Request, corpus: CorpusAnalysisDep) -> AblationAnalysis:
    # async, so it runs on the event loop: one analysis (and one cache of means) per app.
    state = request.app.state
    analysis = getattr(state, "ablation_analysis", None)
    if analysis is None or analysis.corpus is not corpus:
        analysis = state.ablation_analysis = AblationAnalysis(corpus)
    return analysis


AblationDep = Annotated[AblationAnalysis, Depends(get_ablation_analysis)]


@router.post("/ablate", response_model=AblateResponse)
async def ablate(request: AblateRequest, analysis: AblationDep, pool: PoolDep) -> AblateResponse:
    """Next-token loss per token with chosen heads ablated (zero or mean z), and by next tag."""
    return await pool.run(analysis.ablate, request)


@router.post("/corpus/ablation", response_model=CorpusAblationResponse, tags=["corpus"])
async def corpus_ablation(
    request: CorpusAblationRequest, analysis: AblationDep, pool: PoolDep, response: Response
) -> CorpusAblationResponse:
    """Mean loss change per next-token tag over sequences, or every single head's for a tag."""
    result, hit = await pool.run(analysis.corpus_ablation_cached, request)
    response.headers[CACHE_HEADER] = "hit" if hit else "miss"
    return result


@router.get(
    "/corpus/jobs/{job_id}/ablation",
    response_model=CorpusAblationResponse,
    responses=UNKNOWN_JOB,
    tags=["corpus jobs"],
)
def job_ablation(
    job_id: JobId, query: Annotated[CorpusJobAblationQuery, Query()], results: JobResultsDep
) -> CorpusAblationResponse:
    """A finished ablation job's answer: one head's mean loss change per next-token tag, or
    every head's for one tag (each head ablated alone)."""
    return results.ablation(job_id, query)


@router.get(
    "/heads/scores",
    response_model=HeadScoresResponse,
    tags=["heads"],
    description=HEAD_SCORES_METHOD,
)
async def head_scores(
    query: Annotated[HeadScoresQuery, Query()], analysis: AblationDep, pool: PoolDep
) -> HeadScoresResponse:
    """Induction, previous-token or duplicate-token score of every head, as a grid."""
    return await pool.run(analysis.head_scores, query)
