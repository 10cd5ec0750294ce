"""headscope.api.server: the drain's first moment (readiness 503, no new analysis) and its
deadline (every waiting analysis answered 503 with Retry-After), and the log filter that keeps a
repeated warning from flooding the log."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

import pytest
from fastapi.testclient import TestClient

from headscope.analysis.pool import AnalysisPool
from headscope.api.server import DrainingServer, RepeatFilter, uvicorn_config
from headscope.errors import ClientGone, NotReady


def test_readiness_turns_503_the_moment_draining_starts(settings, runtime):
    from headscope.app import create_app

    app = create_app(settings, runtime=runtime)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        server = DrainingServer(uvicorn_config(app, settings), lambda: app.state.pool)
        server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
        assert ready.json()["error"]["code"] == "not_ready"
        refused = client.post("/v1/activity", json={"text": "Hi."})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert client.get("/healthz").status_code == 200  # alive while draining
        assert server.should_exit


def gated(gate: threading.Event):
    def analysis() -> str:
        gate.wait(timeout=30)
        return "done"

    return analysis


def test_the_drain_deadline_answers_every_waiting_analysis_503():
    async def scenario():
        pool = AnalysisPool(max_concurrency=1, max_queue=4)
        gate = threading.Event()
        waits = [asyncio.ensure_future(pool.run(gated(gate))) for _ in range(3)]
        await asyncio.sleep(0.05)  # one running, two queued
        pool.abort_waiting()
        results = await asyncio.gather(*waits, return_exceptions=True)
        gate.set()
        pool.shutdown()
        return results

    results = asyncio.run(scenario())
    assert all(isinstance(result, NotReady) for result in results), results
    assert all(result.headers["Retry-After"] == "1" for result in results)


def test_a_client_that_leaves_stops_its_wait_and_drops_queued_work():
    ran = []

    async def scenario():
        pool = AnalysisPool(max_concurrency=1, max_queue=4)
        gate = threading.Event()
        running = asyncio.ensure_future(pool.run(gated(gate)))
        gone = asyncio.get_running_loop().create_future()
        queued = asyncio.ensure_future(pool.run(ran.append, "queued", disconnected=gone))
        await asyncio.sleep(0.05)
        gone.set_result(None)  # the client of the queued one disconnects
        with pytest.raises(ClientGone):
            await queued
        assert pool.admitted == 1
        gate.set()
        assert await running == "done"
        pool.shutdown()

    asyncio.run(scenario())
    assert ran == []  # the queued analysis never ran


def test_a_repeated_warning_is_written_once_per_window_with_the_count():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("headscope.test-repeat")
    handler = Keep()
    now = [0.0]
    repeat = RepeatFilter(window=10, clock=lambda: now[0])
    handler.addFilter(repeat)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        for _ in range(1000):
            logger.warning("accept() out of resources on %s", "fd 7")
        logger.info("an info line always passes")
        now[0] = 10.5  # the window has passed
        logger.warning("accept() out of resources on %s", "fd 7")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert records[0] == "accept() out of resources on fd 7"
    assert records[1] == "an info line always passes"
    assert records[2] == "accept() out of resources on fd 7 [999 more like this held back]"
    assert len(records) == 3
