"""Stopping an analysis between layers once nobody waits for its answer.

The analysis pool runs each analysis inside `stoppable(event)` and sets the event when the
request's client goes away or the drain deadline passes; the engine checks `stop_signal()`
before each layer and raises `AnalysisStopped`, so the rest of the forward pass is not computed
for nobody. Torch-free, so the pool can import it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_stop: ContextVar[threading.Event | None] = ContextVar("headscope_stop", default=None)


class AnalysisStopped(Exception):
    """Raised between layers when the analysis' stop event is set; nobody reads its result."""


def stop_signal() -> threading.Event | None:
    """The stop event of the analysis running in this thread, if any."""
    return _stop.get()


@contextmanager
def stoppable(event: threading.Event) -> Iterator[None]:
    """Run the body as an analysis that `event` stops."""
    token = _stop.set(event)
    try:
        yield
    finally:
        _stop.reset(token)
