"""The probe endpoints' questions, answered from the runtime's loaded run (or 503 without one)."""

from __future__ import annotations

import numpy as np

from headscope.analysis.probes.pipeline import summary_rows
from headscope.analysis.probes.store import ProbeRun
from headscope.errors import ProbesNotLoaded
from headscope.model.probe_features import ENGINE_FIELDS
from headscope.schemas import (
    ProbePredictRequest,
    ProbePredictResponse,
    ProbeRunInfo,
    ProbeScores,
    TagProbability,
    TokenPrediction,
)


def loaded_run(runtime) -> ProbeRun:
    if runtime.probes is None:
        raise ProbesNotLoaded(
            runtime.probes_reason or "No probe run is loaded.",
            detail={"reason": runtime.probes_reason},
        )
    return runtime.probes


def run_info(runtime) -> ProbeRunInfo:
    run = loaded_run(runtime)
    manifest = run.manifest
    split = manifest["split"]
    metrics = manifest["metrics"]
    return ProbeRunInfo.model_validate(
        {
            "run_id": run.run_id,
            "created": manifest["created"],
            "model_id": manifest["model"]["id"],
            "model_fingerprint": run.model_fingerprint,
            "vectors": run.vectors,
            "tags": run.tags,
            "method": manifest["probe"]["method"],
            "corpus": manifest["corpus"],
            "split": {
                **{k: split[k] for k in ("unit", "seed", "test_size", "max_sequences_per_split")},
                "train_sequences": len(split["train_sequences"]),
                "test_sequences": len(split["test_sequences"]),
                "train_tokens": split["train_tokens"],
                "test_tokens": split["test_tokens"],
                "include_none": manifest["labels"]["include_none"],
            },
            "majority_baseline": metrics["majority_baseline"],
            "zero_division": metrics["zero_division"],
            "summary": summary_rows(manifest),
        }
    )


def scores(runtime, vector: str, tag: str, metric: str) -> ProbeScores:
    grid, support = loaded_run(runtime).scores(vector, tag, metric)
    return ProbeScores.model_validate(
        {
            "vector": vector,
            "tag": tag,
            "metric": metric,
            "scores": grid.tolist(),
            "support": support,
        }
    )


def predict(runtime, request: ProbePredictRequest) -> ProbePredictResponse:
    run = loaded_run(runtime)
    runtime.check_head(request.layer, request.head)
    # Checked before any model work; predict_proba checks it again.
    run.check_vector(request.vector)
    encoded = runtime.encode(request.text)
    output = runtime.forward(encoded, last_layer=request.layer, vectors=True)
    vectors = getattr(output, ENGINE_FIELDS[request.vector])  # [layer, head, token, d_head]
    features = vectors[request.layer, request.head]  # [token, d_head]
    probabilities = run.predict_proba(features, request.vector, request.layer, request.head)
    top_k = min(request.top_k, len(run.tags))
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]  # [token, k]
    predictions = [
        TokenPrediction(
            tag=run.tags[order[0]],
            probability=float(row[order[0]]),
            top=[TagProbability(tag=run.tags[i], probability=float(row[i])) for i in order],
        )
        for row, order in zip(probabilities, ranked, strict=True)
    ]
    return ProbePredictResponse(
        run_id=run.run_id,
        vector=request.vector,
        layer=request.layer,
        head=request.head,
        tokens=runtime.tokens(encoded, runtime.tags(encoded)),
        predictions=predictions,
    )
