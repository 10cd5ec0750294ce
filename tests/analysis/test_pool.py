"""The analysis pool gives its thread back while an analysis waits on another process."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest

from headscope.analysis.pool import AnalysisPool, Awaiting, resolved
from headscope.errors import NotReady


def pending_answer() -> Future:
    future: Future = Future()
    future.set_running_or_notify_cancel()
    return future


async def test_an_analysis_waiting_on_another_process_holds_no_thread():
    pool = AnalysisPool(max_concurrency=1, max_queue=4)
    tags = pending_answer()

    def needs_tags():
        return Awaiting(tags, lambda answer: (answer, threading.current_thread().name))

    try:
        waiting = asyncio.ensure_future(pool.run(needs_tags))
        # The pool's only thread runs other analyses while the first one waits.
        assert await asyncio.wait_for(pool.run(pow, 3, 2), 30) == 9
        assert await asyncio.wait_for(pool.run(pow, 2, 5), 30) == 32
        assert not waiting.done() and pool.admitted == 1  # still counted as admitted
        tags.set_result(["NN", "VBD"])
        answer, thread = await asyncio.wait_for(waiting, 30)
        assert answer == ["NN", "VBD"] and thread.startswith("analysis")  # finished in the pool
        assert pool.admitted == 0
    finally:
        pool.shutdown()


async def test_a_failed_wait_fails_the_analysis_and_frees_its_slot():
    pool = AnalysisPool(max_concurrency=1, max_queue=0)
    tags = pending_answer()
    finished: list[object] = []
    try:
        waiting = asyncio.ensure_future(pool.run(lambda: Awaiting(tags, finished.append)))
        await asyncio.sleep(0)
        tags.set_exception(NotReady("The tagger process stopped.", headers={"Retry-After": "1"}))
        with pytest.raises(NotReady, match="tagger process stopped"):
            await asyncio.wait_for(waiting, 30)
        assert finished == [] and pool.admitted == 0
        assert await pool.run(pow, 2, 2) == 4
    finally:
        pool.shutdown()


def test_resolved_waits_in_the_calling_thread():
    tags = pending_answer()
    threading.Timer(0.01, tags.set_result, args=[["DT"]]).start()
    assert resolved(Awaiting(tags, lambda answer: answer + ["NN"])) == ["DT", "NN"]
    assert resolved({"already": "done"}) == {"already": "done"}


async def test_a_running_analysis_whose_client_left_is_told_to_stop():
    """The pool sets the analysis' stop event (headscope.model.stopping) when its client goes
    away; the engine checks it between layers. Synchronised by events, not by time."""
    from headscope.errors import ClientGone
    from headscope.model.stopping import stop_signal

    pool = AnalysisPool(max_concurrency=1, max_queue=4)
    started, saw_stop = threading.Event(), threading.Event()

    def long_analysis():
        started.set()
        stop = stop_signal()
        assert stop is not None
        if stop.wait(timeout=60):
            saw_stop.set()

    try:
        gone = asyncio.get_running_loop().create_future()
        request = asyncio.ensure_future(pool.run(long_analysis, disconnected=gone))
        await asyncio.to_thread(started.wait, 60)
        gone.set_result(None)  # the client closed its connection
        with pytest.raises(ClientGone):
            await asyncio.wait_for(request, 60)
        assert await asyncio.to_thread(saw_stop.wait, 60)
    finally:
        pool.shutdown()
