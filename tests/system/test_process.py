"""Promises 6 and 7 on real `headscope serve` processes: graceful shutdown within the drain
timeout, fail-fast on truncated or tampered artifacts (or, with a flag, live but without probes),
and no artifact is ever unpickled: booby-trapped pickles where probes and weights are expected
never run.

The processes that must start fully come from the `processes` fixture (conftest.py), which
launches them together.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.helpers import CORPUS, STANDIN_DIR, free_port, server_env
from tests.system.conftest import tamper

FAIL_FAST_SECONDS = 10


def texts(count: int) -> list[str]:
    """`count` different texts of a few hundred tokens (so none is answered from the cache)."""
    paragraphs = [p for p in CORPUS.read_text().split("\n\n") if len(p) > 400]
    return [f"{index}. {paragraphs[index][:800]}" for index in range(count)]


def start_load(base_url: str, count: int):
    """`count` concurrent analyses with four whole patterns each (answers of about a megabyte),
    each on its own connection. The server under test makes each analysis slow by design.
    Each result is (status, headers, body) or the name of the transport error."""
    clients = ThreadPoolExecutor(count)
    patterns = [{"layer": layer, "head": 0} for layer in range(4)]

    def analyse(text: str):
        try:
            response = httpx.post(
                f"{base_url}/v1/analyze", json={"text": text, "patterns": patterns}, timeout=120
            )
            return response.status_code, response.headers, response.content
        except httpx.HTTPError as err:
            return type(err).__name__

    return clients, [clients.submit(analyse, text) for text in texts(count)]


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
    # One analysis at a time, each 1 s by design: 5 are still in flight after the first answer.
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
    results = [f.result() for f in futures]
    clients.shutdown()
    assert in_flight >= 3 and still_running >= 1, (in_flight, still_running)
    assert new_refused, "a new connection was accepted after SIGTERM"
    statuses = [result[0] for result in results]
    assert statuses == [200] * 6, statuses  # every request in flight at SIGTERM completed
    for _, _, body in results:
        assert len(json.loads(body)["patterns"]) == 4  # whole
    assert exited_after < drain + 5
    assert server.process.returncode in (0, -signal.SIGTERM), server.process.returncode
    # The startup log says the API is open (no key), and the bind is loopback.
    assert "unauthenticated" in output and "127.0.0.1" in output, output


def test_the_drain_timeout_bounds_shutdown_and_answers_the_rest_503(processes):
    # Eight analyses of 2 s each by design, one at a time: when the 1 s drain ends, six or
    # seven are still waiting (issue 14, item 5).
    server, drain = processes[0]["drain1"], 1
    clients, futures = start_load(server.base_url, 8)
    wait_for_first(futures)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    output, _ = server.process.communicate(timeout=drain + 10)
    exited_after = time.monotonic() - signalled
    results = [f.result() for f in futures]
    clients.shutdown()
    assert exited_after < drain + 5, exited_after
    # None cut off, no plain-text 500: each answer is whole, a 200 or a 503 envelope.
    assert all(isinstance(result, tuple) for result in results), results
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) < 8 and set(statuses) <= {200, 503}, statuses
    for status, headers, body in results:
        if status == 200:
            assert len(json.loads(body)["patterns"]) == 4
        else:
            assert headers["content-type"] == "application/json"
            assert json.loads(body)["error"]["code"] in ("not_ready", "unavailable"), body
            assert int(headers["retry-after"]) >= 1
    assert "Internal Server Error" not in output and "Traceback" not in output, output[-3000:]


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
