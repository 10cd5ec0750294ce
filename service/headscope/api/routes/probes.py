"""Probes: the loaded run, its score grids, and per-token predictions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from headscope.analysis.probes import service
from headscope.api.deps import PoolDep, RuntimeDep
from headscope.schemas import ProbePredictRequest, ProbePredictResponse, ProbeRunInfo, ProbeScores
from headscope.schemas.probes import ProbeMetric, ProbeVector

router = APIRouter(prefix="/v1/probes", tags=["probes"])


@router.get("", response_model=ProbeRunInfo)
async def probe_run(runtime: RuntimeDep) -> ProbeRunInfo:
    """The loaded probe run: tags, vectors, corpus and split, overall scores per vector."""
    return service.run_info(runtime)


@router.get("/scores", response_model=ProbeScores)
async def probe_scores(
    runtime: RuntimeDep,
    vector: Annotated[ProbeVector, Query(description="Which vector the probes read.")],
    tag: Annotated[
        str,
        Query(
            description="A Penn tag of the run (see GET /v1/probes), or accuracy / macro / "
            "weighted for the overall figures."
        ),
    ],
    metric: Annotated[
        ProbeMetric,
        Query(
            description="f1, precision or recall of the tag; selectivity = the score minus the "
            "control task's (accuracy for tag=accuracy, F1 otherwise)."
        ),
    ] = "f1",
) -> ProbeScores:
    """A [layer][head] grid of one metric for one tag: the paper's Appendix A/B heatmaps."""
    return service.scores(runtime, vector, tag, metric)


@router.post("/predict", response_model=ProbePredictResponse)
async def probe_predict(
    request: ProbePredictRequest, runtime: RuntimeDep, pool: PoolDep
) -> ProbePredictResponse:
    """One head's probe on a text: the predicted tag per token beside the true (NLTK) tag."""
    return await pool.run(service.predict, runtime, request)
