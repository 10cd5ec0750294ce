"""Promise 9, header floods: with `headscope serve`'s protocol settings, 200 headers or a 1 MB
header get a 4xx (or a closed connection), and the server keeps answering /healthz."""

from __future__ import annotations

import contextlib
import json
import socket

import httpx

from tests.hardening.conftest import configured_server


def send_raw(port: int, request: bytes) -> bytes:
    """Write the request (as much as the server accepts) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        with contextlib.suppress(OSError):  # refused mid-way: read the answer sent before
            sock.sendall(request)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except OSError:
            pass
        return reply


def status_and_body(reply: bytes) -> tuple[int | None, dict | None]:
    if not reply:
        return None, None  # closed without an answer
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body) if body else None


def get_with(headers: list[bytes]) -> bytes:
    return (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(headers) + b"\r\n"
    )


def assert_refused(reply: bytes, expected_status: int) -> None:
    status, body = status_and_body(reply)
    assert status is None or status == expected_status, reply[:300]
    if status is not None:
        assert set(body) == {"error"} and body["error"]["code"], body


def test_header_floods_are_refused_and_the_server_keeps_answering(hardened_server):
    port, base_url = hardened_server.port, hardened_server.base_url

    many = get_with([b"X-Flood-%d: %d\r\n" % (i, i) for i in range(200)])
    reply = send_raw(port, many)
    assert_refused(reply, 431)
    detail = status_and_body(reply)[1]["error"]["detail"]
    assert detail["headers"] == 202 and detail["max_headers"] == 100

    huge = get_with([b"X-Huge: " + b"a" * 1_000_000 + b"\r\n"])
    assert_refused(send_raw(port, huge), 400)

    # 90 kB of headers in one read: h11 parses it whole, the middleware refuses it.
    wide = get_with([b"X-Wide-%d: %s\r\n" % (i, b"b" * 1000) for i in range(90)])
    assert_refused(send_raw(port, wide), 431)

    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
    # Within the limits, headers are fine.
    ordinary = send_raw(port, get_with([b"X-Ok-%d: 1\r\n" % i for i in range(50)]))
    assert status_and_body(ordinary) == (200, {"status": "ok"})


def test_the_limits_come_from_the_settings(settings, runtime):
    with configured_server(settings, runtime, max_headers=10, max_header_bytes=4096) as server:
        # Host and Connection + 9 more = 11 headers.
        too_many = send_raw(server.port, get_with([b"X-%d: 1\r\n" % i for i in range(9)]))
        assert status_and_body(too_many)[0] == 431
        wide = send_raw(server.port, get_with([b"X-Wide: " + b"c" * 5000 + b"\r\n"]))
        assert status_and_body(wide)[1]["error"]["code"] == "headers_too_large"
        ok = send_raw(server.port, get_with([b"X-%d: 1\r\n" % i for i in range(8)]))
        assert status_and_body(ok)[0] == 200
