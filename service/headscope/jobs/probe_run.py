"""A probe run in the store, fitted from a corpus job's feature shards.

The training split is fitted shard by shard (`headscope.jobs.probe_fit`); the held-out split (at
most `max_sequences` sequences, the paper's 200) is read into memory and scored with the same
metrics as `headscope probes train`, and the run is saved with the same manifest and tensors, so
the server loads it like any other run. The control task is not fitted here (no selectivity).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

from headscope.analysis.probes.metrics import (
    ZERO_DIVISION,
    classification_report,
    majority_baseline,
)
from headscope.analysis.probes.pipeline import library_versions, model_identity, report_grids
from headscope.analysis.probes.store import FORMAT, read_manifest, save_run
from headscope.errors import StartupError
from headscope.jobs.probe_fit import (
    MapShards,
    Problem,
    ShardTokens,
    fit_sharded,
    map_in_process,
)
from headscope.jobs.run import SHARDS_DIR, read_job
from headscope.jobs.statistics import FEATURES
from headscope.model.probe_features import VECTORS, split_by_sequence
from headscope.model.probe_fit import predict_classes
from headscope.tagging.base import NO_WORD


def feature_shards(job_out: Path) -> list[ShardTokens]:
    shards = []
    for path in sorted((job_out / SHARDS_DIR).glob("*.features.safetensors")):
        with safe_open(path, "numpy") as file:
            shards.append(ShardTokens(path, int((file.metadata() or {})["first_sequence"])))
    return shards


def _split_tokens(
    shards: Sequence[ShardTokens], sequences: Sequence[int], none: int, vectors: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The tagged tokens of `sequences`: vector -> [probe, token, d] float32, and tag codes."""
    wanted = np.asarray(sorted(sequences))
    features: dict[str, list[np.ndarray]] = {vector: [] for vector in vectors}
    tags = []
    for shard in shards:
        data = load_file(shard.path)
        keep = np.isin(data["sequence"] + shard.first_sequence, wanted) & (data["tags"] != none)
        for vector in vectors:
            part = data[vector][:, :, keep].astype(np.float32)  # [layer, head, token, d]
            features[vector].append(part.reshape(part.shape[0] * part.shape[1], *part.shape[2:]))
        tags.append(data["tags"][keep].astype(np.int64))
    return {v: np.concatenate(parts, axis=1) for v, parts in features.items()}, np.concatenate(tags)


def train_run_from_job(
    runtime,
    job_out: Path,
    *,
    store: Path,
    out: Path | None = None,
    vectors: Sequence[str] = VECTORS,
    seed: int = 0,
    test_size: float = 0.2,
    max_sequences: int | None = 200,
    C: float = 1.0,
    tol: float = 1e-4,
    max_iter: int = 100,
    map_shards: MapShards = map_in_process,
) -> Path:
    """Fit, score and save a probe run from the job in `job_out`; returns its folder."""
    started = time.perf_counter()
    job = read_job(job_out)
    if job is None or job.get("status") != "finished" or FEATURES not in job.get("kinds", []):
        raise StartupError(f"{job_out} holds no finished job with {FEATURES}")
    if job["weights_sha256"] != runtime.weights_sha256:
        raise StartupError(f"the job in {job_out} ran another model than {runtime.files.model_id}")
    g = runtime.geometry
    tag_names: list[str] = job["tags"]
    none = tag_names.index(NO_WORD)
    shards = feature_shards(job_out)
    split = split_by_sequence(
        job["sequences"], seed=seed, test_size=test_size, max_sequences=max_sequences
    )
    # The training tags: one pass over the shards' tag codes (no features needed).
    train_counts = np.zeros(len(tag_names), dtype=np.int64)
    train_sequences = np.asarray(sorted(split.train))
    for shard in shards:
        data = load_file(shard.path)
        keep = np.isin(data["sequence"] + shard.first_sequence, train_sequences)
        keep &= data["tags"] != none
        train_counts += np.bincount(data["tags"][keep], minlength=len(tag_names))
    class_codes = np.flatnonzero(train_counts)
    if len(class_codes) < 3:
        raise StartupError("the training split has fewer than three tags; use a larger job")
    test_features, test_codes = _split_tokens(shards, split.test, none, vectors)
    unseen = sorted(set(test_codes.tolist()) - set(class_codes.tolist()))
    label_codes = [*class_codes.tolist(), *unseen]
    labels = [tag_names[code] for code in label_codes]
    index = {code: i for i, code in enumerate(label_codes)}
    y_test = np.array([index[code] for code in test_codes.tolist()], dtype=np.int64)
    y_train = np.repeat(np.arange(len(class_codes)), train_counts[class_codes])
    majority, majority_accuracy = majority_baseline(y_train, y_test)

    tensors: dict[str, np.ndarray] = {}
    vector_metrics: dict[str, Any] = {}
    for vector in vectors:
        fit = fit_sharded(
            shards,
            Problem(vector, train_sequences, class_codes, C),
            tol=tol,
            max_iter=max_iter,
            map_shards=map_shards,
        )
        coef, intercept = fit.coef.astype(np.float32), fit.intercept.astype(np.float32)
        predicted = predict_classes(test_features[vector], coef, intercept)
        grids = report_grids(
            classification_report(y_test, predicted, len(labels)), labels, g.n_layers, g.n_heads
        )
        grids["fit"] = {
            "iterations": fit.iterations.reshape(g.n_layers, g.n_heads).tolist(),
            "converged": fit.converged.reshape(g.n_layers, g.n_heads).tolist(),
        }
        vector_metrics[vector] = grids
        shape = (g.n_layers, g.n_heads, len(class_codes))
        tensors[f"{vector}.coef"] = coef.reshape(*shape, g.d_head)
        tensors[f"{vector}.intercept"] = intercept.reshape(shape)

    created = datetime.now(UTC)
    run_id = f"{created:%Y%m%d-%H%M%S}-{runtime.weights_sha256[:8]}-{secrets.token_hex(2)}"
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "run_id": run_id,
        "created": created.isoformat(timespec="seconds"),
        **model_identity(runtime),
        "corpus": {
            "source": job["corpus"],
            "sha256": job["corpus_sha256"],
            "sequences": job["sequences"],
        },
        "job": {"id": job["id"], "features": "float16, from the job's shards"},
        "split": {
            "unit": "sequence",
            "seed": split.seed,
            "test_size": split.test_size,
            "max_sequences_per_split": split.max_sequences,
            "train_sequences": split.train,
            "test_sequences": split.test,
            "train_tokens": int(len(y_train)),
            "test_tokens": int(len(y_test)),
            "max_tokens": job["max_tokens"],
        },
        "labels": {
            "include_none": False,
            "unseen_test_tags": [tag_names[code] for code in unseen],
            "train_support": dict(
                zip(labels, np.bincount(y_train, minlength=len(labels)).tolist(), strict=True)
            ),
        },
        "tags": [tag_names[code] for code in class_codes],
        "vectors": list(vectors),
        "probe": {
            "kind": "multinomial logistic regression (softmax), one per layer, head and vector",
            "features": "the head's raw key / query / value vector at the token (d_head values)",
            "objective": "sklearn LogisticRegression(C) with lbfgs: mean cross-entropy + "
            "||W||² / (2 C n), intercept not penalised",
            "C": C,
            "method": "sharded Newton (map/reduce over the job's feature shards)",
            "tol": tol,
            "max_iter": max_iter,
        },
        "libraries": library_versions(),
        "timings": {"total_s": round(time.perf_counter() - started, 3)},
        "metrics": {
            "zero_division": ZERO_DIVISION,
            "labels": labels,
            "support": dict(
                zip(labels, np.bincount(y_test, minlength=len(labels)).tolist(), strict=True)
            ),
            "majority_baseline": {"tag": labels[majority], "accuracy": round(majority_accuracy, 6)},
            "control_task": None,
            "vectors": vector_metrics,
        },
    }
    directory = Path(out) if out is not None else Path(store) / run_id
    save_run(directory, manifest, tensors)
    read_manifest(directory)
    return directory
