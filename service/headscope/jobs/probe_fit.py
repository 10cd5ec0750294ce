"""Probe fitting over a job's probe-features shards: Newton's method as map/reduce.

The objective is the single-process fit's (`headscope.model.probe_fit`), sklearn's
LogisticRegression(C) for three or more classes:

    mean_i CE(softmax(x_i W + b), y_i) + ||W||² / (2 C n)      (the intercept is not penalised)

Every pass is a map over the shards of per-shard sums (value, gradient and Hessian at the
current weights, in float64) and a reduce that adds them and takes one damped Newton step per
probe; a probe stops once max|∇f| <= tol, the same test as the single-process fit, so both
reach the same optimum. Features are standardised with the training tokens' mean and standard
deviation (a first map/reduce pass), which leaves the optimum unchanged and keeps the Hessian
well conditioned. The map runs in this process, in joblib workers, or as Ray tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

# Keeps the Hessian solvable along the one flat direction (the same constant on every
# intercept changes nothing).
DAMPING = 1e-6
ARMIJO = 1e-4


@dataclass(frozen=True)
class ShardTokens:
    """Which tokens of one features shard a fit uses: the training sequences' tagged tokens."""

    path: Path
    first_sequence: int


@dataclass(frozen=True)
class Problem:
    vector: str
    train_sequences: np.ndarray  # sorted global sequence indices of the training split
    classes: np.ndarray  # [class] tag codes (indices into the job's tags) the probes predict
    C: float
    probes: np.ndarray | None = None  # indices (layer · heads + head) to fit; None: every head


@dataclass
class ShardedFit:
    coef: np.ndarray  # [probe, class, d] float64, original (unstandardised) features
    intercept: np.ndarray  # [probe, class]
    iterations: np.ndarray  # [probe]
    converged: np.ndarray  # [probe]
    passes: int  # map passes over the shards


def _training_tokens(shard: ShardTokens, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """(features [probe, token, d] float64, labels [token] in 0..class-1) of the shard's
    training tokens whose tag is one of the problem's classes."""
    data = load_file(shard.path)
    sequences = data["sequence"] + shard.first_sequence
    tags = data["tags"].astype(np.int64)
    keep = np.isin(sequences, problem.train_sequences) & np.isin(tags, problem.classes)
    features = data[problem.vector][:, :, keep]  # [layer, head, token, d]
    n_layers, n_heads, n_tokens, d = features.shape
    features = features.reshape(n_layers * n_heads, n_tokens, d)
    if problem.probes is not None:
        features = features[problem.probes]
    labels = np.searchsorted(problem.classes, tags[keep])
    return features.astype(np.float64), labels


def moment_sums(shard: ShardTokens, problem: Problem) -> dict[str, np.ndarray]:
    """Map of the first pass: token count, Σx and Σx² per probe, tokens per class."""
    features, labels = _training_tokens(shard, problem)
    return {
        "tokens": np.array([features.shape[1]], dtype=np.float64),
        "sum": features.sum(axis=1),  # [probe, d]
        "sum_squares": (features**2).sum(axis=1),
        "class_tokens": np.bincount(labels, minlength=len(problem.classes)).astype(np.float64),
    }


def _inputs(features: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """[probe, token, d + 1]: standardised features and a constant 1 for the intercept."""
    standardised = (features - mean[:, None]) / scale[:, None]
    ones = np.ones((*standardised.shape[:2], 1))
    return np.concatenate([standardised, ones], axis=2)


def newton_sums(
    shard: ShardTokens,
    problem: Problem,
    mean: np.ndarray,  # [probe, d]
    scale: np.ndarray,  # [probe, d]
    weights: np.ndarray,  # [active probe, d + 1, class], standardised coordinates
    probes: np.ndarray,  # [active probe] indices
    with_hessian: bool,
) -> dict[str, np.ndarray]:
    """Map of a Newton pass: Σ cross-entropy, Σ ∇ and (optionally) Σ Hessian over the shard's
    training tokens, for the active probes at `weights`."""
    features, labels = _training_tokens(shard, problem)
    inputs = _inputs(features[probes], mean[probes], scale[probes])  # [p, token, d + 1]
    n_probes, n_tokens, n_inputs = inputs.shape
    n_classes = weights.shape[2]
    logits = inputs @ weights  # [p, token, class]
    peak = logits.max(axis=2, keepdims=True)
    exp = np.exp(logits - peak)
    total = exp.sum(axis=2, keepdims=True)
    probabilities = exp / total  # [p, token, class]
    true_logit = np.take_along_axis(logits, labels[None, :, None], axis=2)
    sums = {"loss": (peak + np.log(total) - true_logit).sum(axis=(1, 2))}
    residual = probabilities.copy()
    residual[:, np.arange(n_tokens), labels] -= 1.0
    sums["gradient"] = inputs.transpose(0, 2, 1) @ residual
    if with_hessian:
        # H = Σ_i (diag(p_i) - p_i p_iᵀ) ⊗ x_i x_iᵀ, parameters in (input, class) order.
        diagonal = np.einsum("ptj,ptk,ptc->pjkc", inputs, inputs, probabilities)
        blocks = np.zeros((n_probes, n_inputs, n_classes, n_inputs, n_classes))
        classes = np.arange(n_classes)
        blocks[:, :, classes, :, classes] = diagonal.transpose(3, 0, 1, 2)  # [class, p, j, k]
        hessian = blocks.reshape(n_probes, n_inputs * n_classes, n_inputs * n_classes)
        outer = (inputs[:, :, :, None] * probabilities[:, :, None, :]).reshape(
            n_probes, n_tokens, n_inputs * n_classes
        )  # row i = x_i ⊗ p_i
        sums["hessian"] = hessian - outer.transpose(0, 2, 1) @ outer
    return sums


# map(function, shards, *shared arguments) -> per-shard results; the engines supply it.
MapShards = Callable[..., list[dict[str, np.ndarray]]]


def map_in_process(function, shards: Sequence[ShardTokens], *args) -> list[dict[str, np.ndarray]]:
    return [function(shard, *args) for shard in shards]


def map_on_joblib(workers: int) -> MapShards:
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=workers)

    def run(function, shards: Sequence[ShardTokens], *args) -> list[dict[str, np.ndarray]]:
        return parallel(delayed(function)(shard, *args) for shard in shards)

    return run


def map_on_ray() -> MapShards:
    import ray

    remotes: dict[Callable, object] = {}

    def run(function, shards: Sequence[ShardTokens], *args) -> list[dict[str, np.ndarray]]:
        remote = remotes.setdefault(function, ray.remote(function))
        shared = [ray.put(arg) for arg in args]  # sent once, read by every task
        return ray.get([remote.remote(shard, *shared) for shard in shards])  # type: ignore[attr-defined]

    return run


def _reduce(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.sum([part[name] for part in parts], axis=0) for name in parts[0]}


def fit_sharded(
    shards: Sequence[ShardTokens],
    problem: Problem,
    *,
    tol: float = 1e-4,
    max_iter: int = 100,
    map_shards: MapShards = map_in_process,
) -> ShardedFit:
    """Fit every probe of `problem.vector` from the shards; see the module docstring."""
    moments = _reduce(map_shards(moment_sums, shards, problem))
    n = float(moments["tokens"][0])
    if n == 0 or (moments["class_tokens"] == 0).any():
        raise ValueError("every class needs training tokens")
    mean = moments["sum"] / n  # [probe, d]
    variance = np.maximum(moments["sum_squares"] / n - mean**2, 0.0)
    scale = np.maximum(np.sqrt(variance), 1e-6)
    n_probes, d = mean.shape
    n_classes = len(problem.classes)
    n_params = (d + 1) * n_classes
    # Penalty per parameter: 1 / (C n scale²) on the feature rows, none on the intercept row.
    penalty = np.zeros((n_probes, d + 1, n_classes))
    penalty[:, :d, :] = (1.0 / (problem.C * n * scale**2))[:, :, None]

    priors = moments["class_tokens"] / n
    weights = np.zeros((n_probes, d + 1, n_classes))
    weights[:, d, :] = np.log(priors)  # start at the class priors
    iterations = np.zeros(n_probes, dtype=np.int64)
    converged = np.zeros(n_probes, dtype=bool)
    passes = 1

    def evaluate(points: np.ndarray, probes: np.ndarray, with_hessian: bool):
        nonlocal passes
        passes += 1
        sums = _reduce(
            map_shards(newton_sums, shards, problem, mean, scale, points, probes, with_hessian)
        )
        value = sums["loss"] / n + 0.5 * (penalty[probes] * points**2).sum(axis=(1, 2))
        gradient = sums["gradient"] / n + penalty[probes] * points
        hessian = None
        if with_hessian:
            hessian = sums["hessian"] / n
            hessian[:, np.arange(n_params), np.arange(n_params)] += (
                penalty[probes].reshape(len(probes), -1) + DAMPING
            )
        return value, gradient, hessian

    active = np.arange(n_probes)
    value, gradient, hessian = evaluate(weights[active], active, True)
    for _ in range(max_iter + 1):
        largest = np.abs(gradient).reshape(len(active), -1).max(axis=1)
        done = largest <= tol
        converged[active[done]] = True
        if done.all() or iterations[active].max() >= max_iter:
            break
        keep = ~done
        active, value, gradient = active[keep], value[keep], gradient[keep]
        assert hessian is not None
        hessian = hessian[keep]
        direction = -np.linalg.solve(hessian, gradient.reshape(len(active), -1, 1))
        direction = direction.reshape(gradient.shape)
        slope = (gradient * direction).sum(axis=(1, 2))
        step = np.ones(len(active))
        current = weights[active]
        searching = np.ones(len(active), dtype=bool)
        for _ in range(30):
            trial = current + step[:, None, None] * direction
            trial_value, trial_gradient, trial_hessian = evaluate(trial, active, True)
            searching = trial_value > value + ARMIJO * step * slope
            if not searching.any():
                break
            # Only the probes whose step fell short take a shorter one; the rest keep theirs.
            step[searching] *= 0.5
        weights[active] = trial
        iterations[active] += 1
        value, gradient, hessian = trial_value, trial_gradient, trial_hessian

    coef = weights[:, :d] / scale[:, :, None]  # [probe, d, class]
    intercept = weights[:, d] - np.einsum("pd,pdc->pc", mean, coef)
    # sklearn reports centred multinomial intercepts (softmax is shift invariant).
    intercept = intercept - intercept.mean(axis=1, keepdims=True)
    return ShardedFit(coef.transpose(0, 2, 1), intercept, iterations, converged, passes)
