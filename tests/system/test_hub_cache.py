"""The hub defaults: `headscope serve` with no --model and no --corpus, offline, finds
roneneldan/TinyStories-1M and the TinyStories validation split in a Hugging Face cache (a temp
HF_HOME laid out as huggingface_hub lays it out), trains probes at first start and serves all of
it; with nothing cached, every hub lookup fails at once naming the variable to set."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import CORPUS, STANDIN_DIR, serve_process, server_env

MODEL_REPO = "roneneldan/TinyStories-1M"
REVISION = "8cd14d5339178f1b285f1b52ea32dd3ae5cba7f8"  # any 40-hex commit: the cache's layout
DATASET_REVISION = "f54c09fd23315a6f9c86f9dc80f725de7d8f9c64"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def hub_cache(root: Path, weights: str) -> Path:
    """HF_HOME holding the stand-in as the model repo (`weights`: model.safetensors, or
    pytorch_model.bin only, as the real repo ships) and the sample as TinyStories-valid.txt."""
    hub = root / "hub"
    model = hub / "models--roneneldan--TinyStories-1M"
    snapshot = model / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (model / "refs").mkdir()
    (model / "refs" / "main").write_text(REVISION)
    for name in ("config.json", *TOKENIZER_FILES):
        shutil.copy(STANDIN_DIR / name, snapshot / name)
    if weights == "model.safetensors":
        shutil.copy(STANDIN_DIR / "model.safetensors", snapshot / "model.safetensors")
    else:
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(STANDIN_DIR / "model.safetensors"), snapshot / "pytorch_model.bin")

    dataset = hub / "datasets--roneneldan--TinyStories"
    data_snapshot = dataset / "snapshots" / DATASET_REVISION
    data_snapshot.mkdir(parents=True)
    (dataset / "refs").mkdir()
    (dataset / "refs" / "main").write_text(DATASET_REVISION)
    paragraphs = [p.strip() for p in CORPUS.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    (data_snapshot / "TinyStories-valid.txt").write_text(
        "\n<|endoftext|>\n".join(paragraphs[:300]) + "\n", encoding="utf-8"
    )
    return root


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_serve_with_hub_defaults_loads_model_corpus_and_trains_probes(tmp_path, weights):
    home = hub_cache(tmp_path / "hf-home", weights)
    snapshot = home / "hub/models--roneneldan--TinyStories-1M/snapshots" / REVISION
    corpus_file = home / "hub/datasets--roneneldan--TinyStories/snapshots" / DATASET_REVISION
    corpus_file = corpus_file / "TinyStories-valid.txt"
    env = server_env(HF_HOME=str(home), HF_HUB_OFFLINE="1", HEADSCOPE_TRAIN_PROBES_IF_MISSING="1")
    for name in ("HEADSCOPE_MODEL", "HEADSCOPE_CORPUS", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(name, None)
    arguments = ("--store", str(tmp_path / "store"), "--probes-max-sequences", "6")
    with serve_process(*arguments, env=env, ready_timeout=240) as (base_url, _):
        model = httpx.get(f"{base_url}/v1/model").json()
        assert model["model_id"] == MODEL_REPO
        expected = hashlib.sha256((snapshot / weights).read_bytes()).hexdigest()
        assert model["weights_sha256"] == expected

        ready = httpx.get(f"{base_url}/readyz").json()
        assert ready["probes"] == "loaded", ready  # trained at first start, from the cached split

        quotes = httpx.post(
            f"{base_url}/v1/corpus/quotes", json={"n_sequences": 5}, timeout=60
        ).json()
        source = quotes["source"]
        assert source["corpus"] == "hub:roneneldan/TinyStories/TinyStories-valid.txt"
        assert source["corpus_sha256"] == hashlib.sha256(corpus_file.read_bytes()).hexdigest()
    assert len(list((tmp_path / "store").iterdir())) == 1  # the run it trained, kept for later


def _lookup(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


LOOKUPS = """
import time
from headscope.errors import StartupError
from headscope.model.loading import resolve_model_files
from headscope.analysis.corpus_text import load_corpus
for lookup in (lambda: resolve_model_files("roneneldan/TinyStories-1M"), lambda: load_corpus(None)):
    started = time.monotonic()
    try:
        lookup()
    except StartupError as err:
        print(f"{time.monotonic() - started:.2f}", err)
"""


def test_offline_with_an_empty_cache_every_lookup_names_the_way_out(tmp_path):
    env = server_env(HF_HOME=str(tmp_path / "empty-home"), HF_HUB_OFFLINE="1")
    result = _lookup(LOOKUPS, env)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2, result.stdout + result.stderr
    model, corpus = lines
    assert "HF_HUB_OFFLINE=1" in model and "--model" in model and "HF_HOME" in model
    assert "HF_HUB_OFFLINE=1" in corpus and "--corpus" in corpus
    # Offline, huggingface_hub is never asked to reach the network: no retries, no waiting.
    assert "Retry" not in result.stderr and "Retrying" not in result.stdout


def test_unreachable_hub_fails_at_once_suggesting_offline_mode(tmp_path):
    """No network (the endpoint: a closed loopback port) and no offline flag: the lookup says the
    hub is unreachable and how to use the cache, without huggingface_hub's retries."""
    from tests.helpers import free_port

    env = server_env(
        HF_HOME=str(tmp_path / "empty-home"), HF_ENDPOINT=f"http://127.0.0.1:{free_port()}"
    )
    env.pop("HF_HUB_OFFLINE")
    env.pop("HEADSCOPE_OFFLINE")
    started = time.monotonic()
    result = _lookup(LOOKUPS, env)
    assert time.monotonic() - started < 60
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2, result.stdout + result.stderr
    for line in lines:
        assert "not reachable" in line and "HF_HUB_OFFLINE=1" in line
