"""Promise 9, header floods: with `headscope serve`'s protocol settings, 200 headers or a 1 MB
header get a 4xx (or a closed connection), and the server keeps answering /healthz."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import httpx

from tests.system.conftest import configured_server


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


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response (head, body) from a keep-alive connection; bodies carry Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def send_in_pieces(sock: socket.socket, data: bytes, size: int = 1000) -> None:
    """Separate writes a little apart, so the server reads them separately."""
    for start in range(0, len(data), size):
        sock.sendall(data[start : start + size])
        time.sleep(0.005)


def test_a_head_still_arriving_past_the_cap_is_cut_off_with_the_envelope(settings, runtime):
    with configured_server(settings, runtime, max_header_bytes=4096) as server:
        reply = b""
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            # A header that never ends, a piece per read: no single read is over the cap.
            with contextlib.suppress(OSError):
                for _ in range(40):
                    sock.sendall(b"a" * 512)
                    time.sleep(0.02)
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    reply += chunk
        status, body = status_and_body(reply)
        assert status == 400, reply[:300]
        assert body["error"]["code"] == "bad_http_request"
        assert "4096" in body["error"]["message"]
        assert httpx.get(f"{server.base_url}/healthz").json() == {"status": "ok"}


def test_the_cap_counts_each_request_head_and_never_a_body(settings, runtime):
    with (
        configured_server(settings, runtime, max_header_bytes=4096) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock,
    ):
        # Three heads of 3 kB on one keep-alive connection, each in pieces: 9 kB in all, each
        # under the cap.
        for index in range(3):
            pad = b"p" * 3000
            send_in_pieces(
                sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad-%d: %s\r\n\r\n" % (index, pad)
            )
            head, _ = read_response(sock)
            assert head.startswith(b"HTTP/1.1 200"), head
        # A 20 kB body, in pieces after its head: body bytes are not head bytes.
        body = b'{"text": "The dog ran."' + b" " * 20_000 + b"}"
        send_in_pieces(
            sock,
            b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        )
        head, reply = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200"), (head, reply[:300])
        assert [token["text"] for token in json.loads(reply)["tokens"]][:2] == ["The", " dog"]


def comparable(reply: bytes) -> bytes:
    """A response without its Date header, header names in lower case (case is not meaning)."""
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *headers = head.split(b"\r\n")
    named = [line.partition(b":") for line in headers]
    kept = [name.lower() + b":" + value for name, _, value in named if name.lower() != b"date"]
    return b"\r\n".join([status, *kept]) + b"\r\n\r\n" + body


def test_responses_are_the_bytes_h11_sends(settings, runtime):
    """The httptools protocol changes nothing a client sees on a well-formed request."""
    from headscope.app import create_app
    from tests.system.conftest import ConfiguredServer

    analyze = b'{"text": "Tom said, \\"Hi.\\" Then he ran.", "patterns": [{"layer": 2, "head": 0}]}'
    requests = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /healthz HTTP/1.0\r\n\r\n",
        b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(analyze), analyze),
        b"GET /no/such/route HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/tag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    ]
    h11_server = ConfiguredServer(create_app(settings, runtime=runtime), settings)
    h11_server.config.http = "h11"
    with h11_server, configured_server(settings, runtime) as ours:
        for request in requests:
            expected = comparable(send_raw(h11_server.port, request))
            assert expected.startswith(b"HTTP/1.")
            assert comparable(send_raw(ours.port, request)) == expected, request[:40]
