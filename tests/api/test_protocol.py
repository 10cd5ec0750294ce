"""headscope.api.protocol: every method it overrides in uvicorn's httptools protocol, exercised
through a real uvicorn server on 127.0.0.1 (the configuration `headscope serve` uses), in front of
a tiny ASGI app so each test controls when answers start and how big they are.

uvicorn is pinned to one minor range for these overrides; a new uvicorn must pass this file.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import uvicorn

from headscope.analysis.pool import WriteBacklog
from headscope.api.server import uvicorn_config
from headscope.settings import Settings
from tests.helpers import free_port

BIG = b"x" * (24 * 2**20)


class TinyApp:
    """/big answers 24 MB; /gate waits until the test opens the gate; anything else 'ok'."""

    def __init__(self) -> None:
        self.state = SimpleNamespace(write_backlog=WriteBacklog())
        self.gate = threading.Event()
        self.at_gate = 0  # requests the app has received and holds at the gate

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/gate":
            self.at_gate += 1
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
            self.at_gate -= 1
        body = BIG if scope["path"] == "/big" else b"ok"
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@contextmanager
def tiny_server(**limits):
    app = TinyApp()
    settings = Settings(
        host="127.0.0.1",
        port=free_port(),
        log_level="warning",
        max_connections=8,
        request_head_timeout=3,
        request_body_timeout=1,
        write_timeout=1,
        keep_alive_timeout=30,
        max_header_bytes=4096,
    ).model_copy(update=limits)
    uv = uvicorn.Server(uvicorn_config(app, settings))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield SimpleNamespace(app=app, port=settings.port)
    finally:
        app.gate.set()
        uv.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def server():
    with tiny_server() as running:
        yield running


def connect(server, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", server.port))
    sock.settimeout(10)
    return sock


def until_closed(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def status_and_error(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.rpartition(b"\r\n\r\n")
    status = int(head.split(b"\r\n\r\n")[-1].split()[1])
    return status, json.loads(body)["error"]


def answer_ok(sock: socket.socket) -> bytes:
    """One whole 200 'ok' answer (its head and body may come in separate reads)."""
    received = b""
    while not received.endswith(b"\r\n\r\nok"):
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received
    return received


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_a_malformed_request_gets_the_envelope(server):  # data_received, send_400_response
    with connect(server) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, error = status_and_error(until_closed(sock))
    assert status == 400 and error["code"] == "bad_http_request"


def test_a_head_over_the_cap_is_cut_off(server):  # data_received's count
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):
            sock.sendall(b"X-Filler: " + b"a" * 2000 + b"\r\n")
        status, error = status_and_error(until_closed(sock))
    assert status == 400 and "request head over 4096 bytes" in error["message"]


def test_after_an_answer_the_next_head_is_timed(server):  # on_response_complete, timers
    with connect(server) as sock:
        sock.sendall(request("/"))
        answer_ok(sock)
        sock.sendall(b"GET / HTTP/1.1\r\n")  # the next head, never finished
        status, error = status_and_error(until_closed(sock))
    assert status == 408 and error["code"] == "request_timeout"


def test_a_body_is_timed_from_its_head(server):  # on_headers_complete, on_message_complete
    with connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        status, error = status_and_error(until_closed(sock))
    assert status == 408 and "body" in error["message"]
    with connect(server) as sock:  # a body that arrives in time is answered
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


@pytest.fixture()
def patient_server():
    """Head timeouts far off, so only the cap closes idle connections."""
    with tiny_server(request_head_timeout=120) as running:
        yield running


def test_past_the_cap_idle_connections_make_room_and_busy_ones_do_not(patient_server):
    # connection_made, connection_lost
    server = patient_server
    server.app.gate.clear()
    busy = [connect(server) for _ in range(8)]
    for sock in busy:
        sock.sendall(request("/gate"))
    # Busy by construction: the app holds all eight requests, so their heads have been parsed.
    deadline = time.monotonic() + 60
    while server.app.at_gate < 8:
        assert time.monotonic() < deadline, f"{server.app.at_gate} of 8 requests reached the app"
        time.sleep(0.01)
    with connect(server) as extra:  # all eight busy: refused
        raw = until_closed(extra)
        status, error = status_and_error(raw)
    assert status == 503 and error["code"] == "too_many_connections"
    assert b"\r\nretry-after: 1\r\n" in raw
    server.app.gate.set()
    for sock in busy:
        answer_ok(sock)
    # Now all eight are idle: the first new connection closes one of them to make room; the
    # next ones fit, as each earlier one has closed.
    for _ in range(3):
        with connect(server) as fresh:
            fresh.sendall(request("/"))
            answer_ok(fresh)
    # Which one went depends on the order the gate released them; that one did does not.
    readable, _, _ = select.select(busy, [], [], 60)
    assert len(readable) == 1 and until_closed(readable[0]) == b""
    still_open, _, _ = select.select([s for s in busy if s is not readable[0]], [], [], 0.2)
    assert still_open == []  # the other seven were left alone
    for sock in busy:
        sock.close()


def test_a_client_that_never_reads_is_counted_then_closed(server):
    # pause_writing, resume_writing and the write timeout
    backlog = server.app.state.write_backlog
    with connect(server, rcvbuf=4096) as sock:
        sock.sendall(request("/big"))
        deadline = time.monotonic() + 10
        while backlog.bytes == 0:
            assert time.monotonic() < deadline, "the unsent answer was never counted"
            time.sleep(0.01)
        assert backlog.bytes > 2**20
        # Reading nothing until the write timeout has closed the connection and uncounted it.
        while backlog.bytes:
            assert time.monotonic() < deadline + 60, "the write timeout never closed it"
            time.sleep(0.01)
        received = len(until_closed(sock))
    assert received < len(BIG)  # closed before the answer was taken
    assert backlog.bytes == 0
    with connect(server) as sock:  # a client that reads gets all of it
        sock.sendall(request("/big"))
        sock.settimeout(30)
        received = b""
        while len(received) < len(BIG):
            chunk = sock.recv(1 << 20)
            assert chunk
            received += chunk
    assert backlog.bytes == 0
