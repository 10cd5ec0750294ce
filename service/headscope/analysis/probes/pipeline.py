"""Train a probe run: corpus -> split by sequence -> tags and key/query/value vectors -> one
probe per (layer, head, vector) -> evaluation with the majority and control-task baselines ->
a verified folder in the store."""

from __future__ import annotations

import logging
import platform
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from headscope.analysis.corpus_text import Corpus
from headscope.analysis.probes.metrics import (
    ZERO_DIVISION,
    Report,
    classification_report,
    control_tags,
    majority_baseline,
)
from headscope.analysis.probes.store import FORMAT, read_manifest, save_run
from headscope.model.probe_features import (
    VECTORS,
    Progress,
    T,
    TokenSet,
    build_token_set,
    split_by_sequence,
)
from headscope.model.probe_fit import FitResult, fit_batched, fit_sklearn, predict_classes

log = logging.getLogger("headscope.probes")

Method = Literal["fast", "sklearn"]
LIBRARIES = ("numpy", "torch", "tokenizers", "scikit-learn", "safetensors", "nltk", "headscope")
DIGITS = 6  # metrics are stored rounded to 1e-6


@dataclass(frozen=True)
class TrainConfig:
    vectors: tuple[str, ...] = VECTORS
    seed: int = 0
    test_size: float = 0.2
    max_sequences: int | None = 200  # per split; None = all
    include_none: bool = False  # keep whitespace-only tokens, labelled NONE, as a class
    method: Method = "fast"
    control: bool = True
    C: float = 1.0
    tol: float = 1e-4
    max_iter: int | None = None  # default: 100 Newton steps (fast), 1000 L-BFGS steps (sklearn)
    batch_size: int = 32  # sequences per forward pass


@dataclass
class TrainedRun:
    directory: Path
    manifest: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def tqdm_progress(items: Iterable[T], description: str, total: int) -> Iterable[T]:
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, total=total, leave=False, dynamic_ncols=True)


def log_progress(logger: logging.Logger) -> Progress:
    """Progress as log lines (for training at server start): at 0, every 25 % and the end."""

    def progress(items: Iterable[T], description: str, total: int) -> Iterable[T]:
        marks = {round(total * quarter / 4) for quarter in range(1, 5)}
        logger.info("probes: %s 0/%d", description, total)
        for done, item in enumerate(items, start=1):
            yield item
            if done in marks:
                logger.info("probes: %s %d/%d", description, done, total)

    return progress


def fit_probes(
    config: TrainConfig,
    features: np.ndarray,  # [probe, token, d]
    labels: np.ndarray,  # [token] in 0..n_classes-1, every class present
    n_classes: int,
    *,
    progress: Progress,
    description: str,
) -> FitResult:
    """Every probe at once, with the run's solver and its settings (C, tol, max_iter)."""
    C, tol, max_iter = config.C, config.tol, config.max_iter
    if config.method == "sklearn":
        return fit_sklearn(
            features, labels, n_classes, C=C, tol=tol, max_iter=max_iter or 1000, progress=progress
        )
    return fit_batched(
        features,
        labels,
        n_classes,
        C=C,
        tol=tol,
        max_iter=max_iter or 100,
        progress=progress,
        description=description,
    )


def _grid(values: np.ndarray, n_layers: int, n_heads: int) -> list[list[float]]:
    return np.round(
        np.asarray(values, dtype=np.float64).reshape(n_layers, n_heads), DIGITS
    ).tolist()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def report_grids(
    report: Report, labels: Sequence[str], n_layers: int, n_heads: int
) -> dict[str, Any]:
    return {
        "accuracy": _grid(report.accuracy, n_layers, n_heads),
        "macro": {k: _grid(v, n_layers, n_heads) for k, v in report.macro.items()},
        "weighted": {k: _grid(v, n_layers, n_heads) for k, v in report.weighted.items()},
        "per_tag": {
            tag: {
                "precision": _grid(report.precision[:, index], n_layers, n_heads),
                "recall": _grid(report.recall[:, index], n_layers, n_heads),
                "f1": _grid(report.f1[:, index], n_layers, n_heads),
            }
            for index, tag in enumerate(labels)
        },
    }


def _fit_control(
    config: TrainConfig,
    features_train: np.ndarray,
    features_test: np.ndarray,
    control_train: np.ndarray,
    control_test: np.ndarray,
    n_classes: int,
    progress: Progress,
    description: str,
) -> Report:
    # A rare tag may never be drawn for a training type: fit on the classes that occur.
    present = np.unique(control_train)
    compact = np.searchsorted(present, control_train)
    result = fit_probes(
        config, features_train, compact, len(present), progress=progress, description=description
    )
    predicted = present[predict_classes(features_test, result.coef, result.intercept)]
    return classification_report(control_test, predicted, n_classes)


def train_probe_run(
    runtime,
    corpus: Corpus,
    config: TrainConfig = TrainConfig(),
    *,
    store: Path | str,
    out: Path | str | None = None,
    progress: Progress = tqdm_progress,
) -> TrainedRun:
    """Train, evaluate and save one run; returns its folder and manifest."""
    unknown = sorted(set(config.vectors) - set(VECTORS))
    if unknown or not config.vectors:
        raise ValueError(f"vectors must be some of {', '.join(VECTORS)}; got {config.vectors}")
    g = runtime.geometry
    started = time.perf_counter()
    timings: dict[str, float] = {}

    split = split_by_sequence(
        len(corpus.sequences),
        seed=config.seed,
        test_size=config.test_size,
        max_sequences=config.max_sequences,
    )
    sets: dict[str, TokenSet] = {}
    for name, indices in (("train", split.train), ("test", split.test)):
        sets[name] = build_token_set(
            runtime,
            corpus.sequences,
            indices,
            config.vectors,
            include_none=config.include_none,
            batch_size=config.batch_size,
            progress=progress,
            name=name,
        )
    train, test = sets["train"], sets["test"]
    timings["tag_and_extract_s"] = time.perf_counter() - started

    classes = sorted(set(train.tags.tolist()))
    if len(classes) < 3:
        raise ValueError(f"the training split has only {len(classes)} tags; use more sequences")
    unseen = sorted(set(test.tags.tolist()) - set(classes))
    labels = classes + unseen  # probes predict `classes`; reports also count unseen test tags
    index = {tag: i for i, tag in enumerate(labels)}
    y_train = np.array([index[t] for t in train.tags.tolist()], dtype=np.int64)
    y_test = np.array([index[t] for t in test.tags.tolist()], dtype=np.int64)
    majority, majority_accuracy = majority_baseline(y_train, y_test)
    if config.control:
        control_train, control_test = control_tags(
            train.token_ids, test.token_ids, y_train, len(classes), seed=config.seed
        )

    n_probes = g.n_layers * g.n_heads
    tensors: dict[str, np.ndarray] = {}
    vector_metrics: dict[str, Any] = {}
    timings["fit_s"] = timings["control_fit_s"] = 0.0
    for vector in config.vectors:
        features_train = train.features[vector].reshape(n_probes, len(train), g.d_head)
        features_test = test.features[vector].reshape(n_probes, len(test), g.d_head)
        tick = time.perf_counter()
        result = fit_probes(
            config,
            features_train,
            y_train,
            len(classes),
            progress=progress,
            description=f"fit {vector}",
        )
        timings["fit_s"] += time.perf_counter() - tick
        if not result.converged.all():
            log.warning(
                "%d of %d %s probes stopped before max|gradient| <= %g",
                int((~result.converged).sum()),
                n_probes,
                vector,
                config.tol,
            )
        predicted = predict_classes(features_test, result.coef, result.intercept)
        report = classification_report(y_test, predicted, len(labels))
        grids = report_grids(report, labels, g.n_layers, g.n_heads)
        grids["fit"] = {
            "iterations": result.iterations.reshape(g.n_layers, g.n_heads).tolist(),
            "converged": result.converged.reshape(g.n_layers, g.n_heads).tolist(),
        }
        if config.control:
            tick = time.perf_counter()
            control = _fit_control(
                config,
                features_train,
                features_test,
                control_train,
                control_test,
                len(classes),
                progress,
                f"fit {vector} control",
            )
            timings["control_fit_s"] += time.perf_counter() - tick
            grids["control"] = {
                "accuracy": _grid(control.accuracy, g.n_layers, g.n_heads),
                "macro_f1": _grid(control.macro["f1"], g.n_layers, g.n_heads),
                "weighted_f1": _grid(control.weighted["f1"], g.n_layers, g.n_heads),
                "per_tag_f1": {
                    tag: _grid(control.f1[:, i], g.n_layers, g.n_heads)
                    for i, tag in enumerate(classes)
                },
            }
            grids["selectivity"] = _grid(report.accuracy - control.accuracy, g.n_layers, g.n_heads)
        vector_metrics[vector] = grids
        shape = (g.n_layers, g.n_heads, len(classes))
        tensors[f"{vector}.coef"] = result.coef.reshape(*shape, g.d_head).astype(np.float32)
        tensors[f"{vector}.intercept"] = result.intercept.reshape(shape).astype(np.float32)
    timings["total_s"] = time.perf_counter() - started

    created = datetime.now(timezone.utc)
    fingerprint = runtime.weights_sha256
    run_id = f"{created:%Y%m%d-%H%M%S}-{fingerprint[:8]}-{secrets.token_hex(2)}"
    test_support = np.bincount(y_test, minlength=len(labels))
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "run_id": run_id,
        "created": created.isoformat(timespec="seconds"),
        **model_identity(runtime),
        "corpus": {
            "source": corpus.source,
            "sha256": corpus.sha256,
            "sequences": len(corpus.sequences),
        },
        "split": {
            "unit": "sequence",
            "seed": split.seed,
            "test_size": split.test_size,
            "max_sequences_per_split": split.max_sequences,
            "train_sequences": split.train,
            "test_sequences": split.test,
            "train_tokens": len(train),
            "test_tokens": len(test),
            "truncated_sequences": train.truncated_sequences + test.truncated_sequences,
            "max_tokens": runtime.max_tokens,
            "dropped_none_tokens": train.dropped_none_tokens + test.dropped_none_tokens,
        },
        "labels": {
            "include_none": config.include_none,
            "unseen_test_tags": unseen,
            "train_support": dict(
                zip(labels, np.bincount(y_train, minlength=len(labels)).tolist(), strict=True)
            ),
        },
        "tags": classes,
        "vectors": list(config.vectors),
        "probe": {
            "kind": "multinomial logistic regression (softmax), one per layer, head and vector",
            "features": "the head's raw key / query / value vector at the token (d_head values)",
            "objective": "sklearn LogisticRegression(C) with lbfgs: mean cross-entropy + "
            "||W||² / (2 C n), intercept not penalised",
            "C": config.C,
            "method": {"fast": "batched Newton in torch", "sklearn": "sklearn loop"}[config.method],
            "tol": config.tol,
            "max_iter": config.max_iter or (100 if config.method == "fast" else 1000),
        },
        "libraries": library_versions(),
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
        "metrics": {
            "zero_division": ZERO_DIVISION,
            "labels": labels,
            "support": dict(zip(labels, test_support.tolist(), strict=True)),
            "majority_baseline": {"tag": labels[majority], "accuracy": round(majority_accuracy, 6)},
            "control_task": {
                "unit": "token id (each token type gets one tag, drawn from the training tag "
                "distribution)",
                "seed": config.seed,
            }
            if config.control
            else None,
            "vectors": vector_metrics,
        },
    }
    directory = Path(out) if out is not None else Path(store) / run_id
    save_run(directory, manifest, tensors)
    log.info("probes: saved run %s in %s (%.1f s)", run_id, directory, timings["total_s"])
    return TrainedRun(directory, read_manifest(directory), timings)


def summary_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Per vector: mean and best accuracy / macro-F1 over the heads, mean selectivity."""
    rows = []
    for vector in manifest["vectors"]:
        grids = manifest["metrics"]["vectors"][vector]
        accuracy = np.asarray(grids["accuracy"])
        macro_f1 = np.asarray(grids["macro"]["f1"])
        best = np.unravel_index(int(macro_f1.argmax()), macro_f1.shape)
        best_accuracy = np.unravel_index(int(accuracy.argmax()), accuracy.shape)
        selectivity = grids.get("selectivity")
        rows.append(
            {
                "vector": vector,
                "mean_accuracy": float(accuracy.mean()),
                "best_accuracy": float(accuracy.max()),
                "best_accuracy_head": {
                    "layer": int(best_accuracy[0]),
                    "head": int(best_accuracy[1]),
                },
                "mean_macro_f1": float(macro_f1.mean()),
                "best_macro_f1": float(macro_f1.max()),
                "best_macro_f1_head": {"layer": int(best[0]), "head": int(best[1])},
                "mean_selectivity": None
                if selectivity is None
                else float(np.asarray(selectivity).mean()),
            }
        )
    return rows


def summary_table(manifest: dict[str, Any]) -> str:
    """A markdown table of `summary_rows`, with the majority baseline."""
    majority = manifest["metrics"]["majority_baseline"]
    split = manifest["split"]
    lines = [
        f"run {manifest['run_id']}: {split['train_tokens']} train / {split['test_tokens']} test "
        f"tokens from {len(split['train_sequences'])} + {len(split['test_sequences'])} sequences, "
        f"{len(manifest['tags'])} tags; majority baseline {majority['tag']} = "
        f"{majority['accuracy']:.3f} accuracy",
        "",
        "| vector | mean acc | best acc (head) | mean macro-F1 | best macro-F1 (head) | "
        "mean selectivity |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary_rows(manifest):
        acc_head, f1_head = row["best_accuracy_head"], row["best_macro_f1_head"]
        selectivity = "n/a" if row["mean_selectivity"] is None else f"{row['mean_selectivity']:.3f}"
        lines.append(
            f"| {row['vector']} | {row['mean_accuracy']:.3f} | {row['best_accuracy']:.3f} "
            f"(L{acc_head['layer']}H{acc_head['head']}) | {row['mean_macro_f1']:.3f} | "
            f"{row['best_macro_f1']:.3f} (L{f1_head['layer']}H{f1_head['head']}) | {selectivity} |"
        )
    return "\n".join(lines)


def model_identity(runtime) -> dict[str, Any]:
    """The manifest's model, tokenizer and tagger: what a probe run was trained on."""
    g = runtime.geometry
    return {
        "model": {
            "id": runtime.files.model_id,
            "weights_sha256": runtime.weights_sha256,
            "n_layers": g.n_layers,
            "n_heads": g.n_heads,
            "d_head": g.d_head,
            "d_model": g.d_model,
        },
        "tokenizer": runtime.tokenizer_identity,
        "tagger": {**runtime.tagger.identity, "alignment": "overlap"},
    }
