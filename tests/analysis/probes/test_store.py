"""The probe store: verification (hashes, fingerprint, contents), the startup choice of run,
refusal or a reasoned 503 on failure, and no code execution from anything in the store."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import pickle
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from headscope.analysis.probes import attach_probes, list_runs, load_probe_run
from headscope.analysis.probes.store import MANIFEST, WEIGHTS, ProbeRunError, manifest_sha256
from headscope.errors import InvalidRequest, StartupError, UnknownHead
from headscope.settings import Settings
from tests.helpers import CORPUS


def copy_run(source, target):
    shutil.copytree(source, target)
    return target


def edit_manifest(directory, change, *, rehash_manifest=True):
    """Change a run's manifest as a new valid run would have it (its own hash recomputed), or,
    with rehash_manifest=False, as a hand edit would leave it."""
    path = directory / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    if rehash_manifest:
        manifest["manifest_sha256"] = manifest_sha256(manifest)
    path.write_text(json.dumps(manifest))


def rehash(directory, name):
    digest = hashlib.sha256((directory / name).read_bytes()).hexdigest()

    def change(manifest):
        manifest["artifacts"][name] = {"sha256": digest, "bytes": (directory / name).stat().st_size}

    edit_manifest(directory, change)


class Tripwire:
    """Unpickling this touches a marker file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


def test_verified_run_serves_scores_and_probabilities(probe_run_dir, runtime):
    run = load_probe_run(probe_run_dir, expected_fingerprint=runtime.weights_sha256)
    manifest = json.loads((probe_run_dir / MANIFEST).read_text())
    grid, support = run.scores("key", "NN", "f1")
    assert grid.shape == (8, 16)
    np.testing.assert_allclose(grid, manifest["metrics"]["vectors"]["key"]["per_tag"]["NN"]["f1"])
    assert support == manifest["metrics"]["support"]["NN"] > 0
    accuracy, none = run.scores("value", "accuracy", "recall")
    assert none is None
    np.testing.assert_allclose(accuracy, manifest["metrics"]["vectors"]["value"]["accuracy"])

    # predict_proba against a softmax computed here from the raw safetensors arrays.
    tensors = load_file(str(probe_run_dir / WEIGHTS))
    features = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    coef = tensors["query.coef"][3, 9].astype(np.float64)  # [tag, d]
    intercept = tensors["query.intercept"][3, 9].astype(np.float64)
    logits = features.astype(np.float64) @ coef.T + intercept
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probabilities = run.predict_proba(features, "query", 3, 9)
    assert probabilities.shape == (7, len(run.tags))
    np.testing.assert_allclose(probabilities, expected, atol=1e-9)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (("kee", "NN", "f1"), InvalidRequest),
        (("key", "XYZ", "f1"), InvalidRequest),
        (("key", "NN", "auc"), InvalidRequest),
    ],
)
def test_scores_refuse_unknown_names(probes_runtime, arguments, error):
    with pytest.raises(error):
        probes_runtime.probes.scores(*arguments)


def test_predict_proba_refuses_unknown_heads_and_bad_shapes(probes_runtime):
    run = probes_runtime.probes
    features = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(UnknownHead):
        run.predict_proba(features, "key", 8, 0)
    with pytest.raises(UnknownHead):
        run.predict_proba(features, "key", 0, 16)
    with pytest.raises(InvalidRequest):
        run.predict_proba(np.zeros((3, 5)), "key", 0, 0)


def test_tampered_weights_are_refused(probe_run_dir, runtime, settings, tmp_path):
    run = copy_run(probe_run_dir, tmp_path / "run")
    data = bytearray((run / WEIGHTS).read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    (run / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ProbeRunError) as caught:
        load_probe_run(run, expected_fingerprint=runtime.weights_sha256)
    assert caught.value.check == "sha256" and WEIGHTS in str(caught.value)

    probed = copy.copy(runtime)
    with pytest.raises(StartupError, match="sha256 check"):
        attach_probes(probed, settings.model_copy(update={"probes": run}))
    attach_probes(probed, settings.model_copy(update={"probes": run, "allow_missing_probes": True}))
    assert probed.probes is None and "sha256" in probed.probes_reason
    assert str(run) not in probed.probes_reason  # no server paths in what HTTP bodies show


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["metrics"]["support"].update(NN=10**6),  # a metric
        lambda m: m.update(tags=[*m["tags"][:-1], "XX"]),  # a tag
        lambda m: m.pop("manifest_sha256"),  # the hash itself
    ],
)
def test_an_edited_manifest_is_refused_by_its_own_hash(probe_run_dir, runtime, tmp_path, edit):
    run = copy_run(probe_run_dir, tmp_path / "run")
    edit_manifest(run, edit, rehash_manifest=False)
    with pytest.raises(ProbeRunError) as caught:
        load_probe_run(run, expected_fingerprint=runtime.weights_sha256)
    assert caught.value.check == "manifest sha256", caught.value


def test_a_run_for_another_model_is_refused(probe_run_dir, random_runtime, random_model_dir):
    probed = copy.copy(random_runtime)
    other = Settings(model=str(random_model_dir), probes=probe_run_dir)
    with pytest.raises(StartupError, match="model fingerprint check"):
        attach_probes(probed, other)
    attach_probes(probed, other.model_copy(update={"allow_missing_probes": True}))
    assert probed.probes is None and "model fingerprint" in probed.probes_reason
    assert str(probe_run_dir) not in probed.probes_reason


def test_newest_matching_run_is_chosen(probe_run_dir, runtime, settings, tmp_path):
    store = tmp_path / "store"
    older = copy_run(probe_run_dir, store / "older")
    newer = copy_run(probe_run_dir, store / "newer")
    foreign = copy_run(probe_run_dir, store / "foreign")
    edit_manifest(older, lambda m: m.update(created="2020-01-01T00:00:00+00:00", run_id="older"))
    edit_manifest(newer, lambda m: m.update(created="2021-01-01T00:00:00+00:00", run_id="newer"))
    edit_manifest(
        foreign,
        lambda m: (
            m.update(created="2022-01-01T00:00:00+00:00", run_id="foreign")
            or m["model"].update(weights_sha256="0" * 64)
        ),
    )
    (store / "broken").mkdir()
    (store / "broken" / MANIFEST).write_text("{not json")
    assert [run.run_id for run in list_runs(store)] == ["foreign", "newer", "older"]

    probed = copy.copy(runtime)
    attach_probes(probed, settings.model_copy(update={"store": store}))
    assert probed.probes is not None and probed.probes.run_id == "newer"


def test_without_a_run_the_server_starts_and_says_how_to_train(runtime, settings, tmp_path):
    probed = copy.copy(runtime)
    attach_probes(probed, settings.model_copy(update={"store": tmp_path / "empty"}))
    assert probed.probes is None
    assert "headscope probes train" in probed.probes_reason
    assert "--train-probes-if-missing" in probed.probes_reason


def test_pickles_in_the_store_are_never_executed(probe_run_dir, runtime, settings, tmp_path):
    marker = tmp_path / "pickle-was-executed"
    payload = pickle.dumps(Tripwire(marker))
    store = tmp_path / "store"

    # 1. A pickle listed as an artifact (with a correct hash): refused by name.
    listed = copy_run(probe_run_dir, store / "listed")
    (listed / "probes.pkl").write_bytes(payload)
    rehash(listed, "probes.pkl")
    with pytest.raises(ProbeRunError) as caught:
        load_probe_run(listed, expected_fingerprint=runtime.weights_sha256)
    assert caught.value.check == "artifact" and "probes.pkl" in str(caught.value)

    # 2. A pickle in place of the safetensors file, hash updated to match: not readable.
    swapped = copy_run(probe_run_dir, store / "swapped")
    (swapped / WEIGHTS).write_bytes(payload)
    rehash(swapped, WEIGHTS)
    with pytest.raises(ProbeRunError) as caught:
        load_probe_run(swapped, expected_fingerprint=runtime.weights_sha256)
    assert caught.value.check == "contents"

    # 3. Pickles lying around the store and in a good run: ignored.
    (store / "model.pkl").write_bytes(payload)
    good = copy_run(probe_run_dir, store / "good")
    for name in ("probes.pkl", "probes.joblib", "probes.pt"):
        (good / name).write_bytes(payload)
    edit_manifest(good, lambda m: m.update(created="2000-01-01T00:00:00+00:00"))
    probed = copy.copy(runtime)
    attach_probes(
        probed, settings.model_copy(update={"probes": good, "allow_missing_probes": False})
    )
    assert probed.probes is not None
    assert not marker.exists()


def test_training_at_startup_when_none_matches(standin_dir, tmp_path, caplog):
    from headscope.analysis.service import load_runtime

    store = tmp_path / "store"
    settings = Settings(
        model=str(standin_dir),
        store=store,
        corpus=str(CORPUS),
        train_probes_if_missing=True,
        probes_max_sequences=6,
    )
    with caplog.at_level(logging.INFO, logger="headscope.probes"):
        loaded = load_runtime(settings)
    loaded.close()
    assert loaded.probes is not None
    assert [run.directory for run in list_runs(store)] == [loaded.probes.directory]
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("probes: ")]
    assert any(line.startswith("probes: fit key") for line in progress), progress
    assert any("saved run" in line for line in progress)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda m: m.update(format="something-else/9"),
        lambda m: m.pop("artifacts"),
        lambda m: m.update(model="not a dict"),
        lambda m: m["model"].pop("n_layers"),
    ],
)
def test_a_malformed_manifest_fails_the_manifest_check(probe_run_dir, tmp_path, corrupt):
    run = copy_run(probe_run_dir, tmp_path / "run")
    edit_manifest(run, corrupt)
    with pytest.raises(ProbeRunError) as caught:
        load_probe_run(run, expected_fingerprint=None)
    assert caught.value.check == "manifest"
