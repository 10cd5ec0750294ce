"""Finished corpus jobs (`headscope corpus run`): list them, and answer the corpus questions
from one job's merged sums, a GET each."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam

from headscope.jobs.results import JobResults
from headscope.schemas import (
    JOB_ID_PATTERN,
    ActivityByTagResponse,
    AttentionByTagResponse,
    CorpusJob,
    CorpusJobActivityQuery,
    CorpusJobAttentionQuery,
    CorpusJobList,
    CorpusJobListQuery,
    CorpusJobQuotesQuery,
    ErrorResponse,
    QuotesResponse,
)

router = APIRouter(prefix="/v1/corpus/jobs", tags=["corpus jobs"])
# The routes that name a job; the envelope's model is documented app-wide with the other codes.
UNKNOWN_JOB: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorResponse,
        "description": "No finished job with this id in the jobs directory, or the job did not "
        "compute this statistic.",
    }
}


async def get_job_results(request: Request) -> JobResults:
    # async, so it runs on the event loop: one reader (and its loaded sums) per app.
    state = request.app.state
    results = getattr(state, "job_results", None)
    if results is None:
        results = state.job_results = JobResults(state.settings.jobs_dir)
    return results


JobResultsDep = Annotated[JobResults, Depends(get_job_results)]
JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="A job's id (16 hex digits).")]


# Plain `def` handlers: they read files, so FastAPI runs them in its thread pool.
@router.get("", response_model=CorpusJobList)
def list_jobs(
    query: Annotated[CorpusJobListQuery, Query()], results: JobResultsDep
) -> CorpusJobList:
    """Finished corpus jobs in the server's jobs directory, newest first."""
    return CorpusJobList(jobs=results.jobs(query.corpus_sha256))


@router.get("/{job_id}", response_model=CorpusJob, responses=UNKNOWN_JOB)
def get_job(job_id: JobId, results: JobResultsDep) -> CorpusJob:
    """One finished corpus job: its corpus, model, size and what it computed."""
    return results.job(job_id).job


@router.get(
    "/{job_id}/activity-by-tag", response_model=ActivityByTagResponse, responses=UNKNOWN_JOB
)
def job_activity_by_tag(
    job_id: JobId, query: Annotated[CorpusJobActivityQuery, Query()], results: JobResultsDep
) -> ActivityByTagResponse:
    """Every head's mean activity on, before or after a tag, over the job's whole corpus."""
    return results.activity_by_tag(job_id, query)


@router.get(
    "/{job_id}/attention-by-tag", response_model=AttentionByTagResponse, responses=UNKNOWN_JOB
)
def job_attention_by_tag(
    job_id: JobId, query: Annotated[CorpusJobAttentionQuery, Query()], results: JobResultsDep
) -> AttentionByTagResponse:
    """Where tokens of one tag put one head's attention, over the job's whole corpus."""
    return results.attention_by_tag(job_id, query)


@router.get("/{job_id}/quotes", response_model=QuotesResponse, responses=UNKNOWN_JOB)
def job_quotes(
    job_id: JobId, query: Annotated[CorpusJobQuotesQuery, Query()], results: JobResultsDep
) -> QuotesResponse:
    """Every head's activity inside vs. outside quotations, over the job's whole corpus."""
    return results.quotes(job_id, query)
