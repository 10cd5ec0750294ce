"""The torch-free artifact checks `headscope serve` runs before its slow imports: they catch
truncated and tampered files, and are never stricter than the loader (a healthy setup, a run
for another model, a corrupt run that --allow-missing-probes tolerates all pass)."""

from __future__ import annotations

import json
import shutil

import pytest

from headscope.errors import StartupError
from headscope.preflight import check_artifacts, check_safetensors
from headscope.settings import Settings
from tests.helpers import STANDIN_DIR


@pytest.fixture()
def model_dir(tmp_path):
    target = tmp_path / "model"
    shutil.copytree(STANDIN_DIR, target)
    return target


@pytest.fixture()
def store(probe_run_dir, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(probe_run_dir, store / probe_run_dir.name)
    return store


def test_a_healthy_setup_passes(model_dir, store):
    check_artifacts(Settings(model=str(model_dir), store=store))
    check_artifacts(Settings(model=str(model_dir), probes=next(store.iterdir())))
    check_artifacts(Settings(model="roneneldan/TinyStories-1M", store=store))  # hub: not local


@pytest.mark.parametrize("keep", [0, 7, 100, 1 << 16, -1])
def test_a_cut_safetensors_file_is_named(model_dir, keep):
    weights = model_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:keep] if keep >= 0 else data + b"\0")
    with pytest.raises(StartupError, match=str(weights)):
        check_artifacts(Settings(model=str(model_dir)))


def test_the_loader_agrees_that_a_cut_file_is_unloadable(model_dir):
    from headscope.model.loading import load_weights, resolve_model_files

    weights = model_dir / "model.safetensors"
    files = resolve_model_files(str(model_dir))
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(StartupError):
        check_safetensors(weights)
    with pytest.raises(StartupError, match=str(weights)):
        load_weights(files.config, files.weight_files)


def tamper(run) -> None:
    weights = run / "probes.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))


def test_a_tampered_probe_run_is_named(store):
    run = next(store.iterdir())
    tamper(run)
    with pytest.raises(StartupError, match="sha256 check") as caught:
        check_artifacts(Settings(model=str(STANDIN_DIR), store=store))
    assert str(run) in str(caught.value) and "probes.safetensors" in str(caught.value)
    with pytest.raises(StartupError, match="sha256 check"):
        check_artifacts(Settings(model=str(STANDIN_DIR), probes=run))
    # Tolerated with the flag, as the loader tolerates it.
    check_artifacts(Settings(model=str(STANDIN_DIR), store=store, allow_missing_probes=True))


def test_only_the_run_the_loader_would_pick_is_checked(store):
    run = next(store.iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["model"]["weights_sha256"] = "0" * 64  # a run for another model
    (run / "manifest.json").write_text(json.dumps(manifest))
    tamper(run)
    check_artifacts(Settings(model=str(STANDIN_DIR), store=store))


def test_a_probe_run_without_a_manifest_is_named(store):
    run = next(store.iterdir())
    (run / "manifest.json").unlink()
    with pytest.raises(StartupError, match="manifest"):
        check_artifacts(Settings(model=str(STANDIN_DIR), probes=run))
    check_artifacts(Settings(model=str(STANDIN_DIR), store=store))  # skipped, as list_runs does
