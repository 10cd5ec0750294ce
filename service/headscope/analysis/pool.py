"""Bounded execution of analyses off the event loop, with admission control.

At most `max_concurrency` analyses run at once in a thread pool; up to `max_queue` more wait.
Past that, a request is refused at once with 429 and Retry-After instead of piling up, so a burst
costs callers a retry, not the server its memory or its health checks their answers.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from headscope.errors import ClientGone, HeadscopeError, NotReady, Overloaded
from headscope.model.stopping import stoppable

T = TypeVar("T")
RETRY_AFTER_SECONDS = 1


def glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library is not glibc (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class HeapTrimmer:
    """Hands the memory glibc's malloc keeps after analyses back to the OS, at most once per
    `interval` seconds (0: never).

    Analyses allocate and free tens of MB each; malloc keeps what was freed in its per-thread
    arenas, between the blocks still in use (cached results), so a process under load grows
    well past what it holds. Measured on the bench_http load: 80-120 MB less peak RSS with a
    trim a second, each about 2.5 ms and a few hundred page faults (noise next to the
    analyses). A fixed M_MMAP_THRESHOLD saved as much but made every analysis pay page faults
    (+40-80% CPU); MALLOC_ARENA_MAX=2 saved 20-40 MB, nothing on top of the trim.
    """

    def __init__(self, interval: float, trim: Callable[[int], int] | None = None) -> None:
        self.interval = interval
        self._trim = trim if trim is not None else glibc_malloc_trim()
        self._lock = threading.Lock()
        self._last = time.monotonic()

    def trim_if_due(self) -> None:
        if not self.interval or self._trim is None:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval:
                return
            self._last = now
        self._trim(0)


@dataclass(frozen=True)
class Awaiting(Generic[T]):
    """What an analysis returns when the rest of it needs another process's answer (the tagger's
    tags): the pool gives the analysis thread back while `future` is pending, then runs
    `then(its result)` in the pool. Its slot in the admission count stays taken meanwhile."""

    future: Future
    then: Callable[[Any], T]


def resolved(value: T | Awaiting[T]) -> T:
    """An analysis's result, waiting in this thread if needed: for callers outside the pool."""
    return value.then(value.future.result()) if isinstance(value, Awaiting) else value


class WriteBacklog:
    """Response bytes written but not yet taken by their clients, over every connection.

    The HTTP protocol registers a connection while its transport's write buffer is over the
    high-water mark (a client reading slowly, or not at all) and drops it once the buffer
    drains or the connection closes; admission then counts those bytes, so clients that never
    read cannot make the server hold responses without bound.
    """

    def __init__(self) -> None:
        self._transports: set = set()

    def add(self, transport) -> None:
        self._transports.add(transport)

    def discard(self, transport) -> None:
        self._transports.discard(transport)

    @property
    def bytes(self) -> int:
        return sum(transport.get_write_buffer_size() for transport in self._transports)


class AnalysisPool:
    """Admission and threads for analyses.

    `run` refuses at once when `max_concurrency` analyses run and `max_queue` wait, when the
    write backlog is over `max_unsent_bytes`, and while the server drains. A request whose
    client goes away (`disconnected` resolves) stops waiting: queued work is dropped, a running
    analysis finishes in its thread and its result is discarded. `abort_waiting` ends every
    wait with 503 (the drain deadline).
    """

    def __init__(
        self,
        max_concurrency: int,
        max_queue: int,
        heap_trimmer: HeapTrimmer | None = None,
        write_backlog: WriteBacklog | None = None,
        max_unsent_bytes: int | None = None,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.heap_trimmer = heap_trimmer or HeapTrimmer(interval=0)
        self.write_backlog = write_backlog or WriteBacklog()
        self.max_unsent_bytes = max_unsent_bytes
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="analysis")
        # Touched only from the event loop thread, so plain attributes are race-free.
        self._admitted = 0
        self._closed = False
        self.draining = False
        self._waiting: set[asyncio.Future] = set()
        self._ended: dict[asyncio.Future, HeadscopeError] = {}
        # Each wait's stop event: set when the wait ends early, so the engine stops its running
        # analysis between layers (headscope.model.stopping).
        self._stops: dict[asyncio.Future, threading.Event] = {}

    @property
    def admitted(self) -> int:
        """Analyses running or queued right now."""
        return self._admitted

    def _check_admission(self) -> None:
        if self._closed or self.draining:
            raise NotReady(
                "The server is shutting down.", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
            )
        if self._admitted >= self.max_concurrency + self.max_queue:
            raise Overloaded(
                f"Server busy: {self._admitted} analyses running or queued "
                f"(limit {self.max_concurrency} running + {self.max_queue} queued). Retry shortly.",
                detail={
                    "max_concurrency": self.max_concurrency,
                    "max_queue": self.max_queue,
                    "retry_after": RETRY_AFTER_SECONDS,
                },
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if self.max_unsent_bytes is not None:
            unsent = self.write_backlog.bytes
            if unsent > self.max_unsent_bytes:
                raise Overloaded(
                    f"Server busy: {unsent} bytes of responses wait for slow clients (limit "
                    f"{self.max_unsent_bytes}). Retry shortly.",
                    detail={
                        "unsent_bytes": unsent,
                        "max_unsent_response_bytes": self.max_unsent_bytes,
                        "retry_after": RETRY_AFTER_SECONDS,
                    },
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )

    async def run(
        self,
        function: Callable[..., T | Awaiting[T]],
        *args,
        disconnected: asyncio.Future | None = None,
        **kwargs,
    ) -> T:
        self._check_admission()
        self._admitted += 1
        waiter: asyncio.Future | None = None
        try:
            # Cancelling the wait (the request's task cancelled, the client gone, the drain
            # deadline) drops a queued analysis; a running one finishes in its thread and its
            # result is discarded.
            stop = threading.Event()
            waiter = asyncio.ensure_future(self._in_pool(function, args, kwargs, stop))
            self._waiting.add(waiter)
            self._stops[waiter] = stop
            if disconnected is not None:
                disconnected.add_done_callback(
                    lambda gone: None if gone.cancelled() else self._end(waiter, ClientGone())
                )
            try:
                return await waiter
            except asyncio.CancelledError:
                stop.set()  # whoever cancelled, nobody reads this analysis any more
                ended = self._ended.pop(waiter, None)
                if ended is None:
                    raise
                raise ended from None
        finally:
            self._admitted -= 1
            if waiter is not None:
                self._waiting.discard(waiter)
                self._ended.pop(waiter, None)
                self._stops.pop(waiter, None)

    def _end(self, waiter: asyncio.Future, error: HeadscopeError) -> None:
        if not waiter.done():
            self._ended[waiter] = error
            stop = self._stops.get(waiter)
            if stop is not None:
                stop.set()
            waiter.cancel()

    def begin_drain(self) -> None:
        """Refuse new analyses; those admitted carry on."""
        self.draining = True

    def abort_waiting(self) -> None:
        """End every wait for an analysis with 503 and Retry-After (the drain deadline)."""
        for waiter in list(self._waiting):
            self._end(
                waiter,
                NotReady(
                    "The server is shutting down and could not finish this analysis in time.",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                ),
            )

    async def _in_pool(
        self,
        function: Callable[..., T | Awaiting[T]],
        args: tuple,
        kwargs: dict,
        stop: threading.Event | None = None,
    ) -> T:
        """`function` in a pool thread; an Awaiting it returns is waited for here, on the event
        loop with no thread held, and the rest of the analysis then runs in the pool."""
        result = await asyncio.wrap_future(
            self._executor.submit(self._run_then_trim, function, args, kwargs, stop)
        )
        while isinstance(result, Awaiting):
            answer = await asyncio.wrap_future(result.future)
            if self._closed:
                raise NotReady(
                    "The server is shutting down.",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            result = await asyncio.wrap_future(
                self._executor.submit(self._run_then_trim, result.then, (answer,), {}, stop)
            )
        return result

    def _run_then_trim(
        self,
        function: Callable[..., T],
        args: tuple,
        kwargs: dict,
        stop: threading.Event | None = None,
    ) -> T:
        # In the worker thread, after the analysis: its memory is free by now, and the trim
        # never holds up the event loop.
        try:
            with stoppable(stop or threading.Event()):
                return function(*args, **kwargs)
        finally:
            self.heap_trimmer.trim_if_due()

    def shutdown(self) -> None:
        """Refuse new work, drop what is still queued, wait for what is running."""
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
