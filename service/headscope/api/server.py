"""How `headscope serve` runs uvicorn: the protocol and its limits, an honest drain, and logs that
cannot flood."""

from __future__ import annotations

import asyncio
import logging
import resource
import threading
import time
from collections.abc import Callable

import uvicorn

from headscope.analysis.pool import AnalysisPool, WriteBacklog
from headscope.api.protocol import ConnectionLimits, envelope_httptools_protocol
from headscope.settings import Settings

log = logging.getLogger("headscope")

# After the drain deadline has answered every waiting request 503, the seconds uvicorn still
# gives those answers (and any being written) to reach their clients before it cuts them off.
DRAIN_WRITE_GRACE = 3
# File descriptors beyond the connection cap: model and log files, the tagger child's pipes.
SPARE_FDS = 128


def uvicorn_config(app, settings: Settings) -> uvicorn.Config:
    """The server's protocol limits, from the settings (also used by the tests)."""
    backlog = getattr(getattr(app, "state", None), "write_backlog", None) or WriteBacklog()
    limits = ConnectionLimits(
        max_head_bytes=settings.max_header_bytes,
        max_connections=settings.max_connections,
        head_timeout=settings.request_head_timeout,
        body_timeout=settings.request_body_timeout,
        write_timeout=settings.write_timeout,
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=int(settings.port),
        log_level=settings.log_level,
        # httptools (C parser: a fraction of h11's cost per request), with the envelope and the
        # connection limits of headscope.api.protocol; the exact header limits are
        # HeaderLimitMiddleware's.
        http=envelope_httptools_protocol(limits, backlog),
        timeout_keep_alive=settings.keep_alive_timeout,
        # DrainingServer answers what is still waiting at drain_timeout; uvicorn's own cut-off
        # comes later, so those answers are written whole.
        timeout_graceful_shutdown=settings.drain_timeout + DRAIN_WRITE_GRACE,
        server_header=False,
        lifespan="on",
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining as promised: at the first SIGTERM/SIGINT, readiness turns 503
    and no analysis is admitted any more (uvicorn stops accepting connections); what is in
    flight gets `drain_timeout` seconds, then every request still waiting for an analysis is
    answered 503 with Retry-After."""

    def __init__(self, config: uvicorn.Config, pool: Callable[[], AnalysisPool | None]) -> None:
        super().__init__(config)
        self.pool = pool
        self.drain_timeout = (config.timeout_graceful_shutdown or 0) - DRAIN_WRITE_GRACE
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first:
            self.begin_drain()

    def begin_drain(self) -> None:
        pool = self.pool()
        if pool is None:
            return
        pool.begin_drain()  # a plain flag: safe from a signal handler
        if self.loop is not None:
            self.loop.call_soon_threadsafe(
                self.loop.call_later, self.drain_timeout, pool.abort_waiting
            )


class RepeatFilter(logging.Filter):
    """Lets a warning or error through once per `window` seconds per logger and message
    template, then says how many like it were held back: an attack that triggers the same
    warning thousands of times a second writes a line every few seconds."""

    def __init__(
        self,
        window: float = 10.0,
        max_keys: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._seen: dict[tuple, list] = {}  # key -> [first time in window, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window:
                seen[1] += 1
                return False
            if len(self._seen) >= self.max_keys:
                self._seen.clear()
            self._seen[key] = [now, 0]
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} [{seen[1]} more like this held back]"
        return True


def install_repeat_filter(logger_names=("", "uvicorn", "uvicorn.error", "uvicorn.access")):
    repeat_filter = RepeatFilter()
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(repeat_filter)


def raise_fd_limit(settings: Settings) -> None:
    """Make room for `max_connections` sockets (the soft limit is often 1024; the hard one is
    what the operator allows)."""
    needed = settings.max_connections + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            log.warning(
                "max_connections=%d needs %d file descriptors; the limit allows %d: lower "
                "HEADSCOPE_MAX_CONNECTIONS or raise `ulimit -n`",
                settings.max_connections,
                needed,
                target,
            )


def run(app, settings: Settings) -> bool:
    """Serve `app` until signalled; True if the server started."""
    raise_fd_limit(settings)
    config = uvicorn_config(app, settings)
    install_repeat_filter()
    server = DrainingServer(config, lambda: getattr(app.state, "pool", None))
    server.run()
    return server.started
