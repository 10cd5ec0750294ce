"""`headscope serve --engine ray`: the app as a Ray Serve deployment of two replicas on a local
Ray instance (127.0.0.1) answers the same requests with the same bytes as one in-process app,
refuses overflow with headscope's own 429 envelope, and loses no request when a replica dies.

The replicas' analyses wait while a gate file exists (the test creates and removes it) and log
each held analysis with the replica's pid, so "busy" and "in flight" hold by construction."""

from __future__ import annotations

import functools
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

REQUESTS = [
    ("GET", "/v1/model", None),
    ("POST", "/v1/tag", {"text": 'Tom said, "I like the lake." Then he ran.'}),
    ("POST", "/v1/activity", {"text": "Lily walked to the park.", "layers": [6], "heads": [4]}),
    (
        "POST",
        "/v1/analyze",
        {"text": "His dog ate the bone.", "patterns": [{"layer": 5, "head": 5}]},
    ),
    ("POST", "/v1/attention", {"text": "She said hi.", "layer": 2, "head": 0, "query": 2}),
    ("POST", "/v1/tag", {"text": ""}),  # an error: the same envelope
]
# Every analysis runs at once (none queued), so a held analysis is an admitted one.
MAX_CONCURRENCY = 2
REPLICAS = 2
WAIT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def pids(log: Path) -> list[int]:
    return [int(line) for line in (log.read_text() if log.exists() else "").split()]


class Gate:
    """While `closed` exists, every analysis waits; each one that waited appends its pid to
    `held` first. Each replica appends its pid to `started` when it builds its app."""

    def __init__(self, folder: Path) -> None:
        self.closed = folder / "closed"
        self.held = folder / "held"
        self.started = folder / "started"

    def close(self) -> None:
        self.held.write_text("")
        self.closed.touch()

    def open(self) -> None:
        self.closed.unlink(missing_ok=True)

    def held_pids(self) -> list[int]:
        return pids(self.held)

    def started_pids(self) -> list[int]:
        return pids(self.started)

    def wait_while_closed(self) -> None:
        if not self.closed.exists():
            return
        with self.held.open("a") as handle:
            handle.write(f"{os.getpid()}\n")
        deadline = time.monotonic() + WAIT_S  # a test that fails never holds a replica for good
        while self.closed.exists() and time.monotonic() < deadline:
            time.sleep(0.01)


def gated_app(settings, gate: Gate):
    """The app as `headscope serve` builds it, its analyses held at `gate`."""
    from headscope.analysis.service import load_runtime
    from headscope.app import create_app

    with gate.started.open("a") as handle:
        handle.write(f"{os.getpid()}\n")
    runtime = load_runtime(settings)
    encoded = runtime.encoded

    @functools.wraps(encoded)
    def gated_encoded(*args, **kwargs):
        gate.wait_while_closed()
        return encoded(*args, **kwargs)

    runtime.encoded = gated_encoded
    return create_app(settings, runtime=runtime)


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    return Gate(tmp_path_factory.mktemp("gate"))


@pytest.fixture(scope="module")
def served_settings(settings):
    return settings.model_copy(
        update={
            "host": "127.0.0.1",
            "port": free_port(),
            "max_concurrency": MAX_CONCURRENCY,
            "max_queue": 0,
            "analysis_cache_mb": 0,  # every request is analysed, so every one meets the gate
        }
    )


@pytest.fixture(scope="module")
def ray_served(ray_cluster, served_settings, gate):
    from ray import cloudpickle, serve

    from headscope.cli.serve_ray import start

    # The replicas cannot import this test module: its factory travels by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    start(served_settings, REPLICAS, app_factory=functools.partial(gated_app, gate=gate))
    yield f"http://127.0.0.1:{served_settings.port}"
    gate.open()
    serve.shutdown()


def replica_states() -> dict:
    from ray import serve

    status = serve.status().applications["headscope"]
    return status.deployments["HeadscopeReplica"].replica_states


def analyze_body(number: int) -> dict:
    return {"text": f"Lily saw {number} birds.", "patterns": [{"layer": 5, "head": 5}]}


def test_replicas_answer_with_the_same_bytes(ray_served, api):
    assert replica_states().get("RUNNING") == REPLICAS
    with httpx.Client(base_url=ray_served, timeout=60) as client:
        for _ in range(3):  # enough requests that both replicas answer some
            for method, path, body in REQUESTS:
                ours = client.request(method, path, json=body)
                theirs = api.request(method, path, json=body)
                assert ours.status_code == theirs.status_code, (path, ours.text)
                assert ours.content == theirs.content, path


def test_overflow_gets_headscopes_429_envelope(ray_served, served_settings, gate, api):
    from headscope.analysis.pool import RETRY_AFTER_SECONDS

    slots = REPLICAS * (MAX_CONCURRENCY + served_settings.max_queue)
    held: dict[int, httpx.Response] = {}
    gate.close()
    with httpx.Client(base_url=ray_served, timeout=WAIT_S) as client:
        threads = []
        try:
            for number in range(slots):

                def send(number=number):
                    held[number] = client.post("/v1/analyze", json=analyze_body(number))

                threads.append(threading.Thread(target=send))
                threads[-1].start()
                # One at a time, so Ray's router sees each before it routes the next.
                wait_for(lambda n=number: len(gate.held_pids()) == n + 1, "a held analysis")
            assert len(set(gate.held_pids())) == REPLICAS  # both replicas are full
            refused = client.post("/v1/analyze", json=analyze_body(slots))
        finally:
            gate.open()
            for thread in threads:
                thread.join(WAIT_S)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert refused.json() == {
        "error": {
            "code": "overloaded",
            "message": f"Server busy: {MAX_CONCURRENCY} analyses running or queued "
            f"(limit {MAX_CONCURRENCY} running + 0 queued). Retry shortly.",
            "detail": {
                "max_concurrency": MAX_CONCURRENCY,
                "max_queue": 0,
                "retry_after": RETRY_AFTER_SECONDS,
            },
        }
    }
    for number in range(slots):
        assert held[number].status_code == 200, held[number].text
        assert held[number].content == api.post("/v1/analyze", json=analyze_body(number)).content


def test_a_killed_replica_loses_no_request(ray_served, gate, api):
    """The client's default retry policy carries every request past one replica's death: the
    replica is killed while it holds an analysis in flight. Every request here is an analysis,
    which the policy sends again (none is left uncovered); the one in flight on the killed
    replica gets Ray Serve's bare 500 and is sent again."""
    from headscope_client import AnalyzeResult, Client
    from tests.client.conftest import CountingTransport

    load = 48
    killed_after = 12
    answered = threading.Semaphore(0)

    transport = CountingTransport()
    with Client(ray_served, timeout=WAIT_S, transport=transport) as client:

        def analyze(number: int):
            try:
                return client.analyze(analyze_body(number)["text"], patterns=[(5, 5)])
            finally:
                answered.release()

        # As many at once as one replica admits, so the survivor alone never refuses one.
        with ThreadPoolExecutor(MAX_CONCURRENCY) as threads:
            results = [threads.submit(analyze, number) for number in range(load)]
            for _ in range(killed_after):
                assert answered.acquire(timeout=WAIT_S)
            gate.close()
            try:
                wait_for(lambda: gate.held_pids(), "an analysis in flight")
                # SIGKILL: the replica dies as in a crash, with no chance to finish its requests.
                victim = gate.held_pids()[0]
                os.kill(victim, signal.SIGKILL)
            finally:
                gate.open()
            answers = [result.result(timeout=WAIT_S) for result in results]

    assert len(transport.requests) > load  # the lost request was sent again
    for number, answer in enumerate(answers):
        expected = api.post("/v1/analyze", json=analyze_body(number))
        assert answer == AnalyzeResult.model_validate_json(expected.content), number
    # Ray Serve starts a replica in the dead one's place, and is back to two running.
    wait_for(lambda: len(gate.started_pids()) == REPLICAS + 1, "a new replica")
    assert victim not in gate.started_pids()[REPLICAS:]
    wait_for(lambda: replica_states() == {"RUNNING": REPLICAS}, "the replicas back to 2")
