"""Promises 6 and 7 on real `headscope serve` processes: graceful shutdown within the drain
timeout, fail-fast on truncated or tampered artifacts (or, with a flag, live but without probes),
and no artifact is ever unpickled: booby-trapped pickles where probes and weights are expected
never run.

The processes that must start fully come from the `processes` fixture (conftest.py), which
launches them together.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.helpers import STANDIN_DIR, free_port, server_env
from tests.system.conftest import tamper

FAIL_FAST_SECONDS = 10


def start_load(base_url: str, count: int):
    """`count` concurrent slow requests, each on its own connection: corpus analyses of 60
    sequences drawn with different seeds (so none is served from the cache)."""
    clients = ThreadPoolExecutor(count)

    def analyse(seed: int):
        try:
            response = httpx.post(
                f"{base_url}/v1/corpus/activity-by-tag",
                json={"n_sequences": 60, "seed": seed, "tag": "NN"},
                timeout=120,
            )
            return response.status_code
        except httpx.HTTPError as err:
            return type(err).__name__

    return clients, [clients.submit(analyse, seed) for seed in range(count)]


def wait_for_first(futures, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(f.done() for f in futures):
        assert time.monotonic() < deadline, "no request finished"
        time.sleep(0.01)


def refused(base_url: str) -> bool:
    try:
        httpx.get(f"{base_url}/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def test_sigterm_drains_in_flight_requests_then_exits(processes):
    server, drain = processes[0]["drain30"], 30
    clients, futures = start_load(server.base_url, 6)
    wait_for_first(futures)
    in_flight = sum(not f.done() for f in futures)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    new_refused = refused(server.base_url)
    still_running = sum(not f.done() for f in futures)
    output, _ = server.process.communicate(timeout=drain + 5)
    exited_after = time.monotonic() - signalled
    statuses = [f.result() for f in futures]
    clients.shutdown()
    assert in_flight >= 3 and still_running >= 1, (in_flight, still_running)
    assert new_refused, "a new connection was accepted after SIGTERM"
    assert statuses == [200] * 6, statuses  # every request in flight at SIGTERM completed
    assert exited_after < drain + 5
    assert server.process.returncode in (0, -signal.SIGTERM), server.process.returncode
    # The startup log says the API is open (no key), and the bind is loopback.
    assert "unauthenticated" in output and "127.0.0.1" in output, output


def test_the_drain_timeout_bounds_shutdown(processes):
    server, drain = processes[0]["drain1"], 1
    clients, futures = start_load(server.base_url, 8)
    wait_for_first(futures)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.communicate(timeout=drain + 5)
    exited_after = time.monotonic() - signalled
    statuses = [f.result() for f in futures]
    clients.shutdown()
    assert exited_after < drain + 5
    # More work was queued than the drain allowed: some requests were cut off, and the queued
    # analyses were dropped rather than run to the end.
    assert statuses.count(200) < 8, statuses


def run_serve(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    command = [sys.executable, "-m", "headscope.cli", "serve", "--port", str(free_port()), *args]
    started = time.monotonic()
    result = subprocess.run(command, env=server_env(), capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - started


def assert_fails_fast_naming(result, seconds: float, *fragments: str) -> None:
    assert result.returncode != 0, result.stderr[-2000:]
    assert seconds < FAIL_FAST_SECONDS, f"took {seconds:.1f} s"
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr[-2000:]


def test_truncated_model_weights_fail_fast_naming_the_file(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(STANDIN_DIR, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result, seconds = run_serve("--model", str(model), "--store", str(tmp_path / "store"))
    assert_fails_fast_naming(result, seconds, str(weights))


def test_tampered_probe_weights_fail_fast_naming_the_check(probe_run_dir, tmp_path):
    store = tmp_path / "store"
    run = store / probe_run_dir.name
    shutil.copytree(probe_run_dir, run)
    tamper(run / "probes.safetensors")
    result, seconds = run_serve("--model", str(STANDIN_DIR), "--store", str(store))
    assert_fails_fast_naming(result, seconds, str(run), "sha256", "probes.safetensors")
    # Pointed at explicitly, the same.
    result, seconds = run_serve("--model", str(STANDIN_DIR), "--probes", str(run))
    assert_fails_fast_naming(result, seconds, str(run), "sha256")


def test_pickles_where_probes_are_expected_are_never_executed(processes):
    servers, paths = processes
    result, seconds = run_serve("--model", str(STANDIN_DIR), "--store", str(paths["trapped_store"]))
    assert_fails_fast_naming(result, seconds, str(paths["trapped_run"]), "probes.safetensors")
    assert not paths["marker"].exists()

    # With --allow-missing-probes the server starts, live but without probes, and says why.
    base_url = servers["trapped"].base_url
    ready = httpx.get(f"{base_url}/readyz").json()
    assert ready["probes"] == "unavailable" and "contents check" in ready["probes_reason"]
    assert str(paths["trapped_run"]) not in ready["probes_reason"]  # no server paths in bodies
    probes = httpx.get(f"{base_url}/v1/probes")
    assert probes.status_code == 503 and probes.json()["error"]["code"] == "probes_not_loaded"
    assert httpx.get(f"{base_url}/v1/model").status_code == 200
    assert not paths["marker"].exists()


def test_a_pickled_model_checkpoint_is_never_executed(processes):
    servers, paths = processes
    process = servers["checkpoint"].process
    output, _ = process.communicate(timeout=240)
    assert process.returncode != 0
    assert "pytorch_model.bin" in output and "Traceback" not in output, output[-2000:]
    assert not paths["marker"].exists()
