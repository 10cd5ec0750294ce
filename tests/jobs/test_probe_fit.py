"""Probes fitted by map/reduce over a job's feature shards equal the single-process fit on the
same features: coefficients to 1e-5 (both run to a tight tolerance in float64), and the
held-out macro-F1 of the default fast fit to 1e-4."""

from __future__ import annotations

import numpy as np
import pytest

# A few heads across the layers keep the test short; the fit treats every probe alike.
PROBES = np.array([37, 85])
TIGHT_TOL = 1e-8


@pytest.fixture(scope="module")
def problem_and_data(finished_job):
    """The job's shards, the problem over its training split, and the same tokens in memory."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    from headscope.jobs.probe_fit import Problem, ShardTokens
    from headscope.model.probe_features import split_by_sequence

    job, out = finished_job
    shards = []
    for path in sorted((out / "shards").glob("*.features.safetensors")):
        with safe_open(path, "numpy") as file:
            shards.append(ShardTokens(path, int(file.metadata()["first_sequence"])))
    split = split_by_sequence(job["sequences"], seed=0, test_size=0.2, max_sequences=None)
    none = job["tags"].index("NONE")
    splits = {}
    for name, sequences in (("train", split.train), ("test", split.test)):
        features, tags = [], []
        for shard in shards:
            data = load_file(shard.path)
            keep = np.isin(data["sequence"] + shard.first_sequence, sequences)
            keep &= data["tags"] != none
            features.append(data["key"][:, :, keep].astype(np.float32))
            tags.append(data["tags"][keep])
        stacked = np.concatenate(features, axis=2)  # [layer, head, token, d]
        splits[name] = (stacked.reshape(-1, *stacked.shape[2:])[PROBES], np.concatenate(tags))
    classes = np.unique(splits["train"][1])
    problem = Problem("key", np.array(sorted(split.train)), classes, 1.0, PROBES)
    return shards, problem, splits


def test_sharded_fit_equals_the_single_process_fit(problem_and_data):
    from headscope.analysis.probes.metrics import classification_report
    from headscope.jobs.probe_fit import fit_sharded
    from headscope.model.probe_fit import fit_batched, predict_classes

    shards, problem, splits = problem_and_data
    features, tags = splits["train"]
    labels = np.searchsorted(problem.classes, tags)
    n_classes = len(problem.classes)
    sharded = fit_sharded(shards, problem, tol=TIGHT_TOL)
    assert sharded.converged.all()
    assert sharded.passes > 2

    import torch

    single = fit_batched(features, labels, n_classes, tol=TIGHT_TOL, dtype=torch.float64)
    assert single.converged.all()
    np.testing.assert_allclose(sharded.coef, single.coef, atol=1e-5, rtol=0)

    # The held-out macro-F1 against the default single-process fit.
    fast = fit_batched(features, labels, n_classes)
    test_features, test_tags = splits["test"]
    seen = np.isin(test_tags, problem.classes)
    test_features, test_labels = (
        test_features[:, seen],
        np.searchsorted(problem.classes, test_tags[seen]),
    )

    def macro_f1(coef, intercept):
        predicted = predict_classes(test_features, coef.astype(np.float32), intercept)
        return classification_report(test_labels, predicted, n_classes).macro["f1"]

    default_sharded = fit_sharded(shards, problem)
    np.testing.assert_allclose(
        macro_f1(default_sharded.coef, default_sharded.intercept),
        macro_f1(fast.coef, fast.intercept),
        atol=1e-4,
        rtol=0,
    )
