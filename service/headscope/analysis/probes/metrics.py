"""Probe evaluation with sklearn `classification_report` semantics, for many probes at once.

Per probe, the labels reported are those that occur in the true tags or the predictions
(`unique_labels(y_true, y_pred)`); precision, recall and F1 of a label with no predictions or
no support are 0 (`zero_division=0`); macro = unweighted mean over those labels, weighted =
mean weighted by support; accuracy = micro precision = micro recall = micro F1.

Baselines: the majority class, and the control task of Hewitt & Liang (2019): every token type
(token id) gets a fixed tag drawn at random from the training tag distribution, and the same
probe is trained on those tags; selectivity = task accuracy - control accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ZERO_DIVISION = 0.0


@dataclass(frozen=True)
class Report:
    """Scores of P probes over T labels (the run's label space); NaN-free."""

    precision: np.ndarray  # [probe, label]
    recall: np.ndarray  # [probe, label]
    f1: np.ndarray  # [probe, label]
    support: np.ndarray  # [label] true count in the evaluated tokens
    reported: np.ndarray  # [probe, label] bool: the label is in the probe's report
    accuracy: np.ndarray  # [probe]
    macro: dict[str, np.ndarray]  # precision/recall/f1 -> [probe]
    weighted: dict[str, np.ndarray]  # precision/recall/f1 -> [probe]


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(numerator, denominator).shape, ZERO_DIVISION, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> Report:
    """y_true [token] and y_pred [probe, token], both in 0..n_labels-1."""
    n_probes, n_tokens = y_pred.shape
    rows = np.arange(n_probes)[:, None] * n_labels
    predicted = np.bincount((rows + y_pred).ravel(), minlength=n_probes * n_labels)
    predicted = predicted.reshape(n_probes, n_labels)
    hits = y_pred == y_true[None]
    true_positive = np.bincount((rows + y_pred)[hits], minlength=n_probes * n_labels).reshape(
        n_probes, n_labels
    )
    support = np.bincount(y_true, minlength=n_labels)
    precision = _divide(true_positive, predicted)
    recall = _divide(true_positive, support[None])
    f1 = _divide(2 * true_positive, predicted + support[None])
    reported = (predicted > 0) | (support[None] > 0)
    count = reported.sum(axis=1)
    total = max(int(support.sum()), 1)
    scores = {"precision": precision, "recall": recall, "f1": f1}
    macro = {name: (values * reported).sum(axis=1) / count for name, values in scores.items()}
    weighted = {
        name: (values * support[None]).sum(axis=1) / total for name, values in scores.items()
    }
    accuracy = hits.sum(axis=1) / max(n_tokens, 1)
    return Report(precision, recall, f1, support, reported, accuracy, macro, weighted)


def majority_baseline(train_labels: np.ndarray, test_labels: np.ndarray) -> tuple[int, float]:
    """The most frequent training label and its accuracy on the test labels."""
    majority = int(np.bincount(train_labels).argmax())
    return majority, float(np.mean(test_labels == majority)) if len(test_labels) else 0.0


def control_tags(
    train_token_ids: np.ndarray,
    test_token_ids: np.ndarray,
    train_labels: np.ndarray,
    n_labels: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Hewitt & Liang's control task: each token type gets one tag, drawn from the training tag
    distribution, fixed for all its occurrences in both splits. Returns (train, test) labels."""
    distribution = np.bincount(train_labels, minlength=n_labels) / len(train_labels)
    types = np.unique(np.concatenate([train_token_ids, test_token_ids]))
    drawn = np.random.default_rng(seed).choice(n_labels, size=len(types), p=distribution)
    lookup = dict(zip(types.tolist(), drawn.tolist(), strict=True))
    train = np.array([lookup[t] for t in train_token_ids.tolist()], dtype=np.int64)
    test = np.array([lookup[t] for t in test_token_ids.tolist()], dtype=np.int64)
    return train, test
