"""The uvicorn HTTP protocol headscope serves with: httptools, answering malformed requests with the
error envelope. It subclasses uvicorn's HttpToolsProtocol, so uvicorn is pinned to a minor range in
pyproject.toml and tests/api/test_protocol.py exercises every overridden method."""

from __future__ import annotations

from headscope.api.guards import error_body


def envelope_httptools_protocol(max_head_bytes: int) -> type:
    """uvicorn's httptools protocol, with two changes: a request too malformed to reach the app
    is answered with the JSON envelope instead of plain text, and a request head still
    incomplete past `max_head_bytes` is cut off with 400 (httptools itself buffers a head of any
    size).

    The cap counts every byte read while a head is in progress and is checked once a read has
    been parsed, so a head that arrives whole in one read passes, whatever its size, and meets
    HeaderLimitMiddleware's exact limits: the same rule as h11's `max_incomplete_event_size`.
    """
    import httptools
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    class EnvelopeHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.reading_head = True
            self.head_bytes = 0

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
            if self.reading_head and self.head_bytes > max_head_bytes:
                self.send_400_response(f"request head over {max_head_bytes} bytes")

        def on_headers_complete(self) -> None:
            self.reading_head = False
            self.head_bytes = 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.reading_head = True

        def send_400_response(self, msg: str) -> None:
            if self.transport.is_closing():
                return
            body = error_body("bad_http_request", f"Malformed HTTP request: {msg}")
            head = [STATUS_LINE[400]]
            defaults = self.server_state.default_headers
            head += [name + b": " + value + b"\r\n" for name, value in defaults]
            head += [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return EnvelopeHttpToolsProtocol
