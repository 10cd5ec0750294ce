"""A probe run fitted from a job's feature shards is a normal run in the store: the loader takes
it, and its held-out scores are those of its own probes on the held-out tokens. (That the sharded
fit equals the single-process one is tests/jobs/test_probe_fit.py.)"""

from __future__ import annotations

import numpy as np

from tests.jobs.conftest import job_spec

SEQUENCES = 10


def test_a_run_from_shards_is_a_normal_run(runtime, job_corpus, tmp_path):
    from headscope.analysis.probes.metrics import classification_report
    from headscope.analysis.probes.store import list_runs, load_probe_run
    from headscope.jobs.probe_run import _split_tokens, feature_shards, train_run_from_job
    from headscope.jobs.run import run_job
    from headscope.model.probe_features import split_by_sequence

    corpus = tmp_path / "short.txt"
    corpus.write_text("\n\n".join(job_corpus.read_text().split("\n\n")[:SEQUENCES]) + "\n")
    out = tmp_path / "features"
    job = run_job(job_spec(corpus, out, kinds=("probe-features",)), progress=False)
    store = tmp_path / "store"
    directory = train_run_from_job(runtime, out, store=store, vectors=("key",), max_sequences=None)
    assert [run.directory for run in list_runs(store)] == [directory]
    run = load_probe_run(directory, expected_fingerprint=runtime.weights_sha256)
    assert run.vectors == ["key"]
    assert np.asarray(run.scores("key", "NN", "f1")[0]).shape == (8, 16)

    # Its macro-F1 grid: the stored probes' predictions on the held-out tokens.
    manifest = run.manifest
    codes = {tag: i for i, tag in enumerate(job["tags"])}
    split = split_by_sequence(job["sequences"], seed=0, test_size=0.2, max_sequences=None)
    test, test_codes = _split_tokens(feature_shards(out), split.test, codes["NONE"], ["key"])
    labels = [codes[tag] for tag in manifest["metrics"]["labels"]]
    y_test = np.array([labels.index(code) for code in test_codes])
    layer, head = 3, 7
    probabilities = run.predict_proba(test["key"][layer * 16 + head], "key", layer, head)
    predicted = probabilities.argmax(axis=1)
    expected = classification_report(y_test, predicted[None], len(labels)).macro["f1"][0]
    stored = manifest["metrics"]["vectors"]["key"]["macro"]["f1"][layer][head]
    assert stored == round(float(expected), 6)
