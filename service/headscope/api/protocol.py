"""The uvicorn HTTP protocol headscope serves with: httptools, answering what never reaches the
app with the error envelope, and bounding what a connection may hold.

It subclasses uvicorn's HttpToolsProtocol, so uvicorn is pinned to a minor range in
pyproject.toml and tests/api/test_protocol.py exercises every overridden method.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from headscope.analysis.pool import WriteBacklog
from headscope.api.responses import error_body

# A new connection gets this long to send its request before the connection cap may close it:
# connections accepted in one burst are all made before any is read, and a health probe among
# a flood's connections must not be closed for being the oldest of them.
EVICTION_GRACE_SECONDS = 0.5
# A client that takes less than this in `write_timeout` counts as not reading: trickling a few
# bytes at a time would otherwise hold a whole response's buffer for as long as it likes.
MIN_BYTES_PER_WRITE_TIMEOUT = 64 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int
    max_connections: int
    head_timeout: float
    body_timeout: float
    write_timeout: float


def http_response(
    status_line: bytes, default_headers, code: str, message: str, extra_headers=()
) -> bytes:
    """A whole `connection: close` response carrying the envelope, for the protocol to write."""
    body = error_body(code, message)
    head = [status_line]
    head += [name + b": " + value + b"\r\n" for name, value in [*default_headers, *extra_headers]]
    head += [
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


def envelope_httptools_protocol(limits: ConnectionLimits, backlog: WriteBacklog) -> type:
    """uvicorn's httptools protocol, with these changes:

    - a request too malformed to reach the app is answered with the JSON envelope, not text;
    - a request head still incomplete past `max_head_bytes` is cut off with 400 (httptools
      buffers a head of any size). The cap counts every byte read while a head is in progress
      and is checked once a read has been parsed, so a head that arrives whole in one read
      passes and meets HeaderLimitMiddleware's exact limits (h11's `max_incomplete_event_size`
      rule);
    - at most `max_connections` are open: a new one past it closes the oldest connection with
      no request in progress (idle, or still sending its request), those that have never been
      answered first (an idle flood; none younger than EVICTION_GRACE_SECONDS), clients
      already served last; when none can go, the new one is answered 503 and closed;
    - a request's head must arrive within `head_timeout` of the connection being ready for it,
      and its body within `body_timeout` of the head (slowloris): 408, and the connection closes;
    - a response the client takes (next to) nothing of for `write_timeout` closes the connection
      (its buffered bytes are dropped), and while a response waits in the write buffer its bytes
      count in `backlog`, which admission reads.
    """
    import httptools
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    class EnvelopeHttpToolsProtocol(HttpToolsProtocol):
        # Every open connection of this server, oldest first: those never answered yet, and
        # those answered at least once (moved there at their first answer).
        unanswered: dict[EnvelopeHttpToolsProtocol, None] = {}
        answered: dict[EnvelopeHttpToolsProtocol, None] = {}

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.reading_head = True
            self.head_bytes = 0
            self.request_timer: asyncio.TimerHandle | None = None
            self.write_timer: asyncio.TimerHandle | None = None
            self.unsent_at_check = 0
            self.connected_at = 0.0

        # -- connections -----------------------------------------------------------------------

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.connected_at = self.loop.time()
            open_count = len(self.unanswered) + len(self.answered)
            if open_count >= limits.max_connections and not self._make_room():
                self.logger.warning("Connection refused: %d connections, all busy", open_count)
                self._close_with(
                    503,
                    "too_many_connections",
                    "Too many connections; retry shortly.",
                    [(b"retry-after", b"1")],
                )
                return
            self.unanswered[self] = None
            self._arm_request_timer(limits.head_timeout, "head")

        def _busy(self) -> bool:
            """A whole request received, its answer not yet written."""
            cycle = self.cycle
            return cycle is not None and not cycle.more_body and not cycle.response_complete

        def _make_room(self) -> bool:
            settled = self.loop.time() - EVICTION_GRACE_SECONDS
            for connections in (self.unanswered, self.answered):
                for connection in connections:
                    if connections is self.unanswered and connection.connected_at > settled:
                        break  # the rest are younger still
                    if not connection._busy():
                        self.logger.warning("Connection limit reached: closing the oldest idle one")
                        connection.transport.abort()
                        connections.pop(connection)
                        return True
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            self.unanswered.pop(self, None)
            self.answered.pop(self, None)
            self._cancel_request_timer()
            self._stop_write_watch()
            super().connection_lost(exc)

        def _close_with(self, status: int, code: str, message: str, headers=()) -> None:
            if not self.transport.is_closing():
                defaults = self.server_state.default_headers
                answer = http_response(STATUS_LINE[status], defaults, code, message, headers)
                self.transport.write(answer)
                self.transport.close()

        # -- reading requests --------------------------------------------------------------------

        def _arm_request_timer(self, seconds: float, part: str) -> None:
            self._cancel_request_timer()
            self.request_timer = self.loop.call_later(seconds, self._request_timed_out, part)

        def _cancel_request_timer(self) -> None:
            if self.request_timer is not None:
                self.request_timer.cancel()
                self.request_timer = None

        def _request_timed_out(self, part: str) -> None:
            self.request_timer = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not None and cycle.response_started and not cycle.response_complete:
                self.transport.abort()  # an answer is being written: no room for a 408
                return
            self.logger.warning("Request %s not received in time; connection closed", part)
            self._close_with(408, "request_timeout", f"The request's {part} took too long.")

        def data_received(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            if self.reading_head:
                self.head_bytes += len(data)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as error:
                self.logger.warning("Invalid HTTP request received: %s", error)
                self.send_400_response(str(error) or "invalid HTTP request")
                return
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
            if self.reading_head and self.head_bytes > limits.max_head_bytes:
                self.send_400_response(f"request head over {limits.max_head_bytes} bytes")

        def on_headers_complete(self) -> None:
            self.reading_head = False
            self.head_bytes = 0
            self._arm_request_timer(limits.body_timeout, "body")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._cancel_request_timer()
            super().on_message_complete()
            self.reading_head = True

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self in self.unanswered:
                del self.unanswered[self]
                self.answered[self] = None
            if not self.transport.is_closing():
                self._arm_request_timer(limits.head_timeout, "head")

        def send_400_response(self, msg: str) -> None:
            self._close_with(400, "bad_http_request", f"Malformed HTTP request: {msg}")

        # -- writing responses -------------------------------------------------------------------

        def pause_writing(self) -> None:
            super().pause_writing()
            backlog.add(self.transport)
            self.unsent_at_check = self.transport.get_write_buffer_size()
            self.write_timer = self.loop.call_later(limits.write_timeout, self._check_writes)

        def resume_writing(self) -> None:
            self._stop_write_watch()
            super().resume_writing()

        def _stop_write_watch(self) -> None:
            backlog.discard(self.transport)
            if self.write_timer is not None:
                self.write_timer.cancel()
                self.write_timer = None

        def _check_writes(self) -> None:
            unsent = self.transport.get_write_buffer_size()
            if unsent <= self.unsent_at_check - MIN_BYTES_PER_WRITE_TIMEOUT:  # still reading
                self.unsent_at_check = unsent
                self.write_timer = self.loop.call_later(limits.write_timeout, self._check_writes)
                return
            self.write_timer = None
            self.logger.warning("Client took no response bytes in time; connection closed")
            self.transport.abort()

    return EnvelopeHttpToolsProtocol
