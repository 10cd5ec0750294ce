"""The probe pipeline: split, manifest, evaluation against sklearn, the fast path against the
sklearn loop, the control task, and the layer-0 key probes against the majority baseline."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from sklearn.metrics import classification_report as sklearn_report
from sklearn.metrics import f1_score

from headscope.analysis.corpus_text import load_corpus
from headscope.analysis.probes.metrics import classification_report, control_tags
from headscope.analysis.probes.store import MANIFEST, WEIGHTS, load_probe_run
from headscope.model.probe_features import build_token_set, split_by_sequence
from headscope.model.probe_fit import fit_batched, fit_sklearn, predict_classes
from tests.helpers import CORPUS

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def manifest(probe_run_dir):
    return json.loads((probe_run_dir / MANIFEST).read_text())


@pytest.fixture(scope="module")
def test_split(runtime, manifest):
    """The run's held-out tokens, rebuilt from the sequence indices the manifest recorded."""
    corpus = load_corpus(CORPUS)
    return build_token_set(
        runtime,
        corpus.sequences,
        manifest["split"]["test_sequences"],
        manifest["vectors"],
        include_none=manifest["labels"]["include_none"],
    )


def test_split_is_by_sequence_seeded_and_capped():
    first = split_by_sequence(100, seed=3, test_size=0.2, max_sequences=10)
    again = split_by_sequence(100, seed=3, test_size=0.2, max_sequences=10)
    other = split_by_sequence(100, seed=4, test_size=0.2, max_sequences=10)
    assert first == again and first.train != other.train
    assert len(first.train) == len(first.test) == 10
    assert not set(first.train) & set(first.test)
    uncapped = split_by_sequence(100, seed=3, test_size=0.2, max_sequences=None)
    assert (len(uncapped.train), len(uncapped.test)) == (80, 20)
    with pytest.raises(ValueError):
        split_by_sequence(100, seed=0, test_size=1.5, max_sequences=None)


def test_manifest_records_the_run(manifest, runtime, probe_run_dir):
    assert manifest["model"]["weights_sha256"] == runtime.weights_sha256
    assert manifest["corpus"]["sha256"] == hashlib.sha256(CORPUS.read_bytes()).hexdigest()
    split = manifest["split"]
    assert split["unit"] == "sequence"
    assert not set(split["train_sequences"]) & set(split["test_sequences"])
    assert len(split["train_sequences"]) == len(split["test_sequences"]) == 24
    assert manifest["vectors"] == ["key", "query", "value"]
    assert manifest["tags"] == sorted(manifest["tags"]) and "NN" in manifest["tags"]
    assert "NONE" not in manifest["tags"] and manifest["labels"]["include_none"] is False
    assert manifest["tagger"]["tagger_sha256"] == runtime.tagger.identity["tagger_sha256"]
    assert {"torch", "scikit-learn", "numpy", "safetensors"} <= set(manifest["libraries"])
    weights = probe_run_dir / WEIGHTS
    assert (
        manifest["artifacts"][WEIGHTS]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    )
    assert manifest["metrics"]["zero_division"] == 0
    grids = manifest["metrics"]["vectors"]["key"]
    assert np.asarray(grids["accuracy"]).shape == (8, 16)
    selectivity = np.asarray(grids["accuracy"]) - np.asarray(grids["control"]["accuracy"])
    np.testing.assert_allclose(grids["selectivity"], selectivity, atol=2e-6)


def test_token_counts_match_the_tagger(runtime, manifest, test_split):
    corpus = load_corpus(CORPUS)
    expected = 0
    for index in manifest["split"]["test_sequences"]:
        encoded = runtime.encode(corpus.sequences[index])
        expected += sum(tag != "NONE" for tag in runtime.tags(encoded))
    assert len(test_split) == manifest["split"]["test_tokens"] == expected


def test_stored_metrics_match_sklearn_classification_report(probe_run_dir, manifest, test_split):
    run = load_probe_run(probe_run_dir, expected_fingerprint=None)
    for vector, layer, head in (("key", 0, 3), ("value", 5, 11), ("query", 7, 0)):
        features = test_split.features[vector][layer, head]  # [token, d_head]
        probabilities = run.predict_proba(features, vector, layer, head)
        predicted = np.asarray(run.tags)[probabilities.argmax(axis=1)]
        expected = sklearn_report(test_split.tags, predicted, output_dict=True, zero_division=0)
        grids = manifest["metrics"]["vectors"][vector]
        assert grids["accuracy"][layer][head] == pytest.approx(expected["accuracy"], abs=TOLERANCE)
        for average in ("macro", "weighted"):
            for metric, key in (
                ("precision", "precision"),
                ("recall", "recall"),
                ("f1", "f1-score"),
            ):
                stored = grids[average][metric][layer][head]
                assert stored == pytest.approx(expected[f"{average} avg"][key], abs=TOLERANCE)
        for tag in run.tags:
            if tag not in expected:
                continue
            for metric, key in (
                ("precision", "precision"),
                ("recall", "recall"),
                ("f1", "f1-score"),
            ):
                stored = grids["per_tag"][tag][metric][layer][head]
                assert stored == pytest.approx(expected[tag][key], abs=TOLERANCE), (tag, metric)
            assert manifest["metrics"]["support"][tag] == expected[tag]["support"]


def test_layer0_key_probes_beat_the_majority_baseline(manifest):
    accuracy = np.asarray(manifest["metrics"]["vectors"]["key"]["accuracy"])[0]  # [head]
    majority = manifest["metrics"]["majority_baseline"]["accuracy"]
    assert (accuracy > majority).all(), (accuracy, majority)


def objective(features, labels, coef, intercept, C=1.0):
    """sklearn's LogisticRegression objective, written out in numpy."""
    logits = features.astype(np.float64) @ coef.T.astype(np.float64) + intercept  # [token, class]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    cross_entropy = -log_probabilities[np.arange(len(labels)), labels].mean()
    return cross_entropy + (coef.astype(np.float64) ** 2).sum() / (2 * C * len(labels))


def test_fast_path_agrees_with_the_sklearn_loop(runtime, manifest, test_split):
    corpus = load_corpus(CORPUS)
    train_split = build_token_set(
        runtime,
        corpus.sequences,
        manifest["split"]["train_sequences"],
        ["key"],
        include_none=False,
    )
    classes = manifest["tags"]
    index = {tag: i for i, tag in enumerate(classes)}
    y_train = np.array([index[tag] for tag in train_split.tags])
    heads = [(0, 0), (2, 7), (5, 3), (7, 15)]
    features = np.stack([train_split.features["key"][layer, head] for layer, head in heads])
    fast = fit_batched(features, y_train, len(classes))
    slow = fit_sklearn(features, y_train, len(classes))
    test_features = np.stack([test_split.features["key"][layer, head] for layer, head in heads])
    fast_predicted = predict_classes(test_features, fast.coef, fast.intercept)
    slow_predicted = predict_classes(test_features, slow.coef, slow.intercept)
    names = np.asarray(classes)
    for probe in range(len(heads)):
        fast_f1, slow_f1 = (
            f1_score(test_split.tags, names[predicted[probe]], average="macro", zero_division=0)
            for predicted in (fast_predicted, slow_predicted)
        )
        assert abs(fast_f1 - slow_f1) <= 0.01, (heads[probe], fast_f1, slow_f1)
        # Same objective: the fast optimum is at least as low as sklearn's, and close to it.
        fast_value = objective(features[probe], y_train, fast.coef[probe], fast.intercept[probe])
        slow_value = objective(features[probe], y_train, slow.coef[probe], slow.intercept[probe])
        assert fast_value <= slow_value + 1e-5
        assert abs(fast_value - slow_value) <= 1e-3


def test_control_task_gives_each_token_type_one_tag():
    train_ids = np.array([5, 7, 5, 9, 7, 5])
    test_ids = np.array([9, 11, 5, 11])
    train_labels = np.array([0, 1, 0, 2, 2, 0])
    train, test = control_tags(train_ids, test_ids, train_labels, 3, seed=1)
    again = control_tags(train_ids, test_ids, train_labels, 3, seed=1)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    tag_of = {}
    tokens, tags = np.concatenate([train_ids, test_ids]), np.concatenate([train, test])
    for token, tag in zip(tokens, tags, strict=True):
        assert tag_of.setdefault(int(token), int(tag)) == tag
    # Drawn from the training tag distribution: a tag that never occurs is never drawn.
    many = np.arange(5000)
    drawn, _ = control_tags(many, many[:1], np.array([0] * 3 + [1]), 3, seed=0)
    assert set(np.unique(drawn)) == {0, 1}
    assert np.mean(drawn == 0) == pytest.approx(0.75, abs=0.03)


def test_vectorised_report_matches_sklearn():
    rng = np.random.default_rng(0)
    n_labels = 9
    y_true = rng.integers(0, 7, size=300)  # labels 7, 8: never true
    y_pred = rng.integers(0, 6, size=(4, 300))  # label 6: true but never predicted
    y_pred[1, :5] = 8  # predicted, never true
    report = classification_report(y_true, y_pred, n_labels)
    for probe in range(4):
        expected = sklearn_report(y_true, y_pred[probe], output_dict=True, zero_division=0)
        for label in range(n_labels):
            if str(label) not in expected:
                assert not report.reported[probe, label]
                continue
            row = expected[str(label)]
            assert report.precision[probe, label] == pytest.approx(row["precision"], abs=1e-12)
            assert report.recall[probe, label] == pytest.approx(row["recall"], abs=1e-12)
            assert report.f1[probe, label] == pytest.approx(row["f1-score"], abs=1e-12)
            assert report.support[label] == row["support"]
        assert report.accuracy[probe] == pytest.approx(expected["accuracy"], abs=1e-12)
        for average in ("macro", "weighted"):
            for metric, key in (
                ("precision", "precision"),
                ("recall", "recall"),
                ("f1", "f1-score"),
            ):
                value = getattr(report, average)[metric][probe]
                assert value == pytest.approx(expected[f"{average} avg"][key], abs=1e-12)
