"""Promises 4 and 5: backpressure, not collapse (a bounded pool and queue, 429 + Retry-After past
them, health checks answered meanwhile) and no crosstalk between concurrent requests."""

from __future__ import annotations

import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import CORPUS
from tests.system.conftest import assert_envelope, configured_server


def gated_pool(max_concurrency: int, max_queue: int):
    """The real AnalysisPool, except that each analysis first waits at a gate the test opens:
    a way to hold requests inside the pool for as long as the test needs."""
    from headscope.analysis.pool import AnalysisPool

    class GatedPool(AnalysisPool):
        def __init__(self) -> None:
            super().__init__(max_concurrency, max_queue)
            self.gate = threading.Event()
            self._lock = threading.Lock()
            self.entered = 0

        async def run(self, function, *args, **kwargs):
            def gated(*args, **kwargs):
                with self._lock:
                    self.entered += 1
                if not self.gate.wait(timeout=60):
                    raise TimeoutError("gate never opened")
                return function(*args, **kwargs)

            return await super().run(gated, *args, **kwargs)

    return GatedPool()


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def paragraphs(count: int, min_chars: int = 80) -> list[str]:
    found = [p.strip() for p in CORPUS.read_text().split("\n\n") if len(p.strip()) >= min_chars]
    return found[:count]


def test_past_the_queue_requests_are_refused_and_the_admitted_succeed(settings, runtime):
    texts = ["The dog ran to the park.", 'Mia said, "I like red apples."']
    with configured_server(settings, runtime) as server:
        server.app.state.pool.shutdown()
        pool = server.app.state.pool = gated_pool(max_concurrency=1, max_queue=1)
        url = f"{server.base_url}/v1/attention"
        with ThreadPoolExecutor(12) as clients:
            held = [
                clients.submit(
                    httpx.post, url, json={"text": text, "layer": 3, "head": 7}, timeout=90
                )
                for text in texts
            ]
            # One runs (held at the gate), one waits in the queue: the pool is full.
            wait_for(lambda: pool.entered == 1 and pool.admitted == 2)
            refused = list(
                clients.map(
                    lambda i: httpx.post(
                        url, json={"text": f"Extra request {i}.", "layer": 0, "head": 0}
                    ),
                    range(10),
                )
            )
            for response in refused:
                assert response.status_code in (429, 503), response.text
                assert_envelope(response)
                assert int(response.headers["retry-after"]) >= 1
            pool.gate.set()
            admitted = [future.result() for future in held]
    assert pool.entered == 2  # the refused ten never reached the pool's threads
    from headscope.schemas import AttentionRequest

    for text, response in zip(texts, admitted, strict=True):
        assert response.status_code == 200, response.text
        alone = runtime.attention(AttentionRequest(text=text, layer=3, head=7))
        assert_same(response.json(), alone.model_dump(mode="json"), text)


def test_health_answers_while_the_pool_is_busy(processes):
    """/healthz never queues behind analyses. On a real `headscope serve` whose analyses take a
    second each by design (tests/system/slow_serve.py), 16 of them at 2 a time keep the pool
    busy for 8 s, and health checks keep answering while half of them still wait: a health
    check queued behind analyses could not. (Its latency under load is measured in bench/.)"""
    server = processes[0]["busy"]
    latencies: list[float] = []
    pending_at_answer: list[int] = []  # analyses not yet answered when each health check was
    with (
        httpx.Client(base_url=server.base_url, timeout=120) as load,
        httpx.Client(base_url=server.base_url, timeout=30) as health,
        ThreadPoolExecutor(16) as clients,
    ):

        def analyse(index: int) -> int:
            body = {"text": f"Tom saw {index} red birds.", "layer": index % 8, "head": index}
            return load.post("/v1/attention", json=body).status_code

        futures = [clients.submit(analyse, i) for i in range(16)]
        while not all(f.done() for f in futures):
            started = time.perf_counter()
            assert health.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - started)
            pending_at_answer.append(sum(not f.done() for f in futures))
            time.sleep(0.05)
        statuses = [f.result() for f in futures]
    assert statuses == [200] * 16
    print(f"/healthz while busy: {len(latencies)} samples, max {max(latencies) * 1e3:.1f} ms")
    answered_while_half_waited = sum(pending >= 8 for pending in pending_at_answer)
    assert answered_while_half_waited >= 5, pending_at_answer


ROUTES = ("/v1/attention", "/v1/analyze", "/v1/activity", "/v1/tag")


def request_for(index: int, text: str) -> tuple[str, dict]:
    route = ROUTES[index % len(ROUTES)]
    layer, head = index % 8, (5 * index + 1) % 16
    body = {
        "/v1/attention": {"text": text, "layer": layer, "head": head},
        "/v1/analyze": {"text": text, "patterns": [{"layer": layer, "head": head}]},
        "/v1/activity": {"text": text, "layers": [layer], "heads": [head, (head + 3) % 16]},
        "/v1/tag": {"text": text},
    }[route]
    return route, body


def assert_same(concurrent, alone, where: str) -> None:
    """Equal structure and strings; floats equal up to summation-order noise (far below any
    mixed-up request, whose numbers differ in the first digit)."""
    if isinstance(alone, dict):
        assert concurrent.keys() == alone.keys(), where
        for key in alone:
            assert_same(concurrent[key], alone[key], f"{where}.{key}")
    elif isinstance(alone, list):
        assert len(concurrent) == len(alone), where
        for index, (a, b) in enumerate(zip(concurrent, alone, strict=True)):
            assert_same(a, b, f"{where}[{index}]")
    elif isinstance(alone, float):
        assert concurrent == pytest.approx(alone, abs=1e-6), where
    else:
        assert concurrent == alone, where


def test_no_crosstalk_between_32_concurrent_requests(settings, runtime):
    texts = paragraphs(32)
    cases = [request_for(i, text) for i, text in enumerate(texts)]
    with configured_server(settings, runtime, max_concurrency=8) as server:
        with httpx.Client(base_url=server.base_url, timeout=120) as client:
            alone = [client.post(route, json=body).json() for route, body in cases]
        barrier = threading.Barrier(32)

        def concurrently(case):
            route, body = case
            barrier.wait()
            return httpx.post(f"{server.base_url}{route}", json=body, timeout=120)

        with ThreadPoolExecutor(32) as clients:
            together = list(clients.map(concurrently, cases))
    for index, (response, expected) in enumerate(zip(together, alone, strict=True)):
        assert response.status_code == 200, response.text
        assert_same(response.json(), expected, f"request {index} {cases[index][0]}")


async def test_the_pool_trims_the_heap_in_its_threads_at_most_once_per_interval():
    from headscope.analysis.pool import AnalysisPool, HeapTrimmer

    trims: list[str] = []
    unwanted: list[str] = []

    def fake_trim(pad: int) -> int:
        trims.append(threading.current_thread().name)
        return 1

    pool = AnalysisPool(2, 8, HeapTrimmer(interval=0.2, trim=fake_trim))
    never = AnalysisPool(2, 8, HeapTrimmer(interval=0, trim=lambda pad: unwanted.append(pad)))
    try:
        started = time.monotonic()
        results = []
        while time.monotonic() - started < 0.7:
            results.append(await pool.run(pow, len(results), 2))
            await never.run(time.sleep, 0.001)
        elapsed = time.monotonic() - started
    finally:
        pool.shutdown()
        never.shutdown()
    assert results == [index**2 for index in range(len(results))]
    assert len(results) > 20
    # One trim per 0.2 s at most (the first one 0.2 s after the pool started), and only from
    # the pool's own threads, never the event loop's.
    assert 1 <= len(trims) <= elapsed / 0.2
    assert all(name.startswith("analysis") for name in trims), trims
    assert unwanted == []


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_malloc_trim_is_found_and_runs():
    from headscope.analysis.pool import glibc_malloc_trim

    trim = glibc_malloc_trim()
    assert trim is not None and trim(0) in (0, 1)
