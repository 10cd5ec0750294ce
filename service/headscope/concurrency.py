"""Bounded execution of analyses off the event loop, with admission control.

At most `max_concurrency` analyses run at once in a thread pool; up to `max_queue` more wait.
Past that, a request is refused at once with 429 and Retry-After instead of piling up, so a burst
costs callers a retry, not the server its memory or its health checks their answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from headscope.errors import NotReady, Overloaded

T = TypeVar("T")
RETRY_AFTER_SECONDS = 1


class AnalysisPool:
    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="analysis")
        # Touched only from the event loop thread, so plain attributes are race-free.
        self._admitted = 0
        self._closed = False

    @property
    def admitted(self) -> int:
        """Analyses running or queued right now."""
        return self._admitted

    async def run(self, function: Callable[..., T], *args, **kwargs) -> T:
        if self._closed:
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
        self._admitted += 1
        try:
            future = self._executor.submit(function, *args, **kwargs)
            # If this request is cancelled (e.g. the drain timeout ran out), a queued analysis is
            # dropped; a running one finishes in its thread and its result is discarded.
            return await asyncio.wrap_future(future)
        finally:
            self._admitted -= 1

    def shutdown(self) -> None:
        """Refuse new work, drop what is still queued, wait for what is running."""
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
