"""`headscope serve` as a real process: it answers on 127.0.0.1, and fails fast, naming what is
missing, when the model, tokenizer or tagger cannot be found."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import httpx
import pytest

from tests.helpers import STANDIN_DIR, serve_process, server_env


def test_serve_answers_end_to_end():
    with serve_process("--model", str(STANDIN_DIR), "--max-tokens", "300") as (base_url, _):
        info = httpx.get(f"{base_url}/v1/model").json()
        assert info["max_tokens"] == 300
        assert info["model_id"] == str(STANDIN_DIR)
        body = httpx.post(
            f"{base_url}/v1/analyze",
            json={"text": 'She said, "Hi!"', "patterns": [{"layer": 2, "head": 0}]},
        ).json()
        n = len(body["tokens"])
        assert len(body["activity"]) == 8 and len(body["activity"][0][0]) == n
        assert len(body["patterns"][0]["pattern"]) == n
        too_long = httpx.post(f"{base_url}/v1/tag", json={"text": " cat" * 301})
        assert too_long.status_code == 413


def run_serve(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "headscope.cli", "serve", "--port", "1", *args]
    return subprocess.run(
        command, env=server_env(**env), capture_output=True, text=True, timeout=timeout
    )


def model_dir_without(tmp_path, *missing: str):
    target = tmp_path / "model"
    shutil.copytree(STANDIN_DIR, target)
    for name in missing:
        (target / name).unlink()
    return target


def assert_fails_naming(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_missing_directory(tmp_path):
    missing = tmp_path / "no-such-model"
    assert_fails_naming(run_serve("--model", str(missing)), str(missing), "does not exist")


def test_missing_weights(tmp_path):
    target = model_dir_without(tmp_path, "model.safetensors")
    assert_fails_naming(run_serve("--model", str(target)), "model.safetensors", str(target))


def test_missing_tokenizer_files(tmp_path):
    target = model_dir_without(tmp_path, "vocab.json")
    assert_fails_naming(run_serve("--model", str(target)), "vocab.json", "HEADSCOPE_TOKENIZER")


def test_truncated_weights(tmp_path):
    target = model_dir_without(tmp_path)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1 << 16])
    assert_fails_naming(run_serve("--model", str(target)), "model.safetensors")


def test_other_architecture_is_refused(tmp_path):
    target = model_dir_without(tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = "gpt2"
    (target / "config.json").write_text(json.dumps(config))
    assert_fails_naming(run_serve("--model", str(target)), "gpt2", "GPT-Neo")


def test_hub_model_offline_names_the_variable():
    result = run_serve("--model", "roneneldan/TinyStories-1M")
    assert_fails_naming(result, "roneneldan/TinyStories-1M", "HEADSCOPE_MODEL")


def test_missing_nltk_tagger(tmp_path):
    result = run_serve("--model", str(STANDIN_DIR), NLTK_DATA=str(tmp_path))
    assert_fails_naming(result, "averaged_perceptron_tagger_eng", "NLTK_DATA")


@pytest.mark.parametrize("max_tokens", ["4096", "0"])
def test_token_limit_beyond_the_config_is_refused(max_tokens):
    result = run_serve("--model", str(STANDIN_DIR), "--max-tokens", max_tokens)
    assert result.returncode != 0
    assert "max_tokens" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        (("--attention-kernel", "fast"), {}, ("attention_kernel", "'auto', 'c' or 'torch'")),
        ((), {"HEADSCOPE_ATTENTION_KERNEL": "gpu"}, ("attention_kernel",)),
        (("--heap-trim-interval", "-1"), {}, ("heap_trim_interval", "greater than or equal")),
        ((), {"HEADSCOPE_TAGGER_PROCESS": "sometimes"}, ("tagger_process", "boolean")),
    ],
)
def test_invalid_performance_settings_are_refused_by_name(args, env, fragments):
    result = run_serve("--model", str(STANDIN_DIR), *args, **env)
    assert result.returncode == 2
    assert_fails_naming(result, "invalid setting", *fragments)


def test_kernel_required_without_a_compiler_refuses_to_start(tmp_path):
    result = run_serve(
        "--model",
        str(STANDIN_DIR),
        "--attention-kernel",
        "c",
        "--kernel-cache",
        str(tmp_path),
        CC=str(tmp_path / "no-such-compiler"),
    )
    assert_fails_naming(result, "attention kernel is unavailable", "no-such-compiler")
