"""Fixtures for the hardening tests: apps with tight limits, served by uvicorn with the same
protocol settings as `headscope serve` (cli.uvicorn_config), on 127.0.0.1; and real
`headscope serve` processes, some of them fed booby-trapped artifacts."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import (
    CORPUS,
    STANDIN_DIR,
    ServerThread,
    free_port,
    server_env,
    wait_until_ready,
)

# Anything in an error body that would reveal the server's insides.
LEAK = re.compile(r"Traceback|File \"|/site-packages/|/work/|\.py\b|headscope/|line \d+")


def assert_envelope(response, status: int | None = None, code: str | None = None) -> dict:
    """The one error shape: {"error": {"code", "message", "detail"}}, and nothing leaked."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "detail"}, error
    assert isinstance(error["code"], str) and re.fullmatch(r"[a-z_]+", error["code"]), error
    assert isinstance(error["message"], str) and error["message"], error
    assert not LEAK.search(response.text), response.text[:500]
    if code is not None:
        assert error["code"] == code, error
    return error


class ConfiguredServer(ServerThread):
    """`headscope serve`'s uvicorn configuration, in a thread, on a free loopback port."""

    def __init__(self, app, settings) -> None:
        from headscope.cli import uvicorn_config

        settings = settings.model_copy(
            update={"host": "127.0.0.1", "port": free_port(), "log_level": "warning"}
        )
        super().__init__(app, uvicorn_config(app, settings), stop_timeout=30)


@contextmanager
def configured_server(settings, runtime, **overrides) -> Iterator[ConfiguredServer]:
    """An app over the session runtime with `overrides` applied to the settings."""
    from headscope.app import create_app

    settings = settings.model_copy(update=overrides)
    with ConfiguredServer(create_app(settings, runtime=runtime), settings) as server:
        yield server


@pytest.fixture(scope="module")
def hardened_server(settings, runtime) -> Iterator[ConfiguredServer]:
    """Default limits, production protocol settings."""
    with configured_server(settings, runtime) as server:
        yield server


# -- real `headscope serve` processes ------------------------------------------------------


class Trap:
    """Unpickling this creates `marker`: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def tamper(path: Path) -> None:
    """Flip one bit of the last byte: the file still parses, only its hash tells."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def booby_trapped_store(probe_run_dir: Path, root: Path, marker: Path) -> tuple[Path, Path]:
    """A store whose only run has a pickle for weights (with the manifest's hash updated to
    match, so only the reader's refusal to unpickle stands between the file and code
    execution), and stray pickles where a careless loader might look."""
    from headscope.analysis.probes.store import manifest_sha256, sha256_file

    store = root / "trapped-store"
    run = store / probe_run_dir.name
    shutil.copytree(probe_run_dir, run)
    trap = pickle.dumps(Trap(marker))
    weights = run / "probes.safetensors"
    weights.write_bytes(trap)
    manifest_path = run / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["artifacts"]["probes.safetensors"]["sha256"] = sha256_file(weights)
    manifest["manifest_sha256"] = manifest_sha256(manifest)
    manifest_path.write_text(json.dumps(manifest))
    for stray in (run / "probes.pkl", run / "probes.joblib", run / "model.bin", store / "x.pkl"):
        stray.write_bytes(trap)
    return store, run


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen


def launch(*args: str, module: str = "headscope.cli", **env: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", module, "serve", "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--port", str(port), *args],
        env=server_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Server(f"http://127.0.0.1:{port}", process)


@pytest.fixture(scope="package")
def processes(probe_run_dir, tmp_path_factory):
    """Real `headscope serve` processes for the tests that need one, launched together: a start
    is mostly single-threaded imports, so on two cores they overlap instead of queueing.
    Yields ({name: Server}, paths); no pickle may ever have run when they are done."""
    root = tmp_path_factory.mktemp("processes")
    marker = root / "pickle-was-executed"
    trapped_store, trapped_run = booby_trapped_store(probe_run_dir, root, marker)
    checkpoint_dir = root / "pickled-model"
    shutil.copytree(STANDIN_DIR, checkpoint_dir)
    (checkpoint_dir / "model.safetensors").unlink()
    import torch

    # A torch checkpoint whose unpickling runs code: what torch.load(weights_only=False) of a
    # downloaded pytorch_model.bin would do.
    torch.save(Trap(marker), checkpoint_dir / "pytorch_model.bin")

    def draining(drain: int, analysis_seconds: float) -> Server:
        # Every analysis takes `analysis_seconds` by design (tests/system/slow_serve.py), so
        # what is still in flight when the drain ends never depends on the machine's speed.
        store = root / f"store-{drain}"
        return launch(
            *("--model", str(STANDIN_DIR), "--store", str(store), "--corpus", str(CORPUS)),
            *("--max-concurrency", "1", "--drain-timeout", str(drain), "--log-level", "warning"),
            module="tests.system.slow_serve",
            HEADSCOPE_TEST_ANALYSIS_DELAY=str(analysis_seconds),
        )

    servers = {
        "soak": launch(
            *("--model", str(STANDIN_DIR), "--probes", str(probe_run_dir), "--corpus", str(CORPUS)),
            *("--store", str(root / "soak-store"), "--log-level", "warning"),
        ),
        "drain30": draining(30, analysis_seconds=1.0),
        # Analyses of a second each by design, two at a time: the pool stays busy for as long
        # as the health test needs, whatever the machine's speed.
        "busy": launch(
            *("--model", str(STANDIN_DIR), "--store", str(root / "busy-store")),
            *("--allow-missing-probes", "--log-level", "warning"),
            module="tests.system.slow_serve",
            HEADSCOPE_TEST_ANALYSIS_DELAY="1.0",
        ),
        "drain1": draining(1, analysis_seconds=3.0),
        "trapped": launch(
            *("--model", str(STANDIN_DIR), "--store", str(trapped_store)),
            *("--allow-missing-probes", "--log-level", "warning"),
        ),
        "checkpoint": launch("--model", str(checkpoint_dir), "--store", str(root / "empty")),
    }
    try:
        for name, server in servers.items():
            if name != "checkpoint":
                wait_until_ready(server.base_url, timeout=240, process=server.process)
        yield (
            servers,
            {"marker": marker, "trapped_store": trapped_store, "trapped_run": trapped_run},
        )
    finally:
        for server in servers.values():
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait(timeout=30)
        assert not marker.exists(), "a pickle was executed"
