"""Issue 14's attacks, each against a real `headscope serve` process on 127.0.0.1 (bounded counts
and time): input that would build huge answers or 5xx, connections that idle or send slowly,
clients that never read, clients that leave, and what /readyz shows.

Two servers, launched together and shared by the module: `guarded` (an API key, tight limits so
each attack trips them quickly) and `slow` (every analysis takes a second by design, one at a
time, each counted in a file: see tests/system/slow_serve.py).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from headscope.api.protocol import EVICTION_GRACE_SECONDS
from tests.helpers import CORPUS, STANDIN_DIR, free_port, server_env, wait_until_ready
from tests.system.conftest import assert_envelope

KEY = "attack-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_CONNECTIONS = 16
HEAD_TIMEOUT = BODY_TIMEOUT = 1
WRITE_TIMEOUT = 2
MAX_RESPONSE_BYTES = 16_000_000
MAX_UNSENT_BYTES = 1_000_000


@dataclass
class Running:
    base_url: str
    port: int
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(tmp: Path, name: str, *args: str, module: str = "headscope.cli", **env: str) -> Running:
    port = free_port()
    log = tmp / f"{name}.log"
    command = [sys.executable, "-m", module, "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--model", str(STANDIN_DIR), "--store", str(tmp / "store"), *args]
    with log.open("w") as handle:  # a file, never a pipe: a long-lived server must not block
        process = subprocess.Popen(
            command, env=server_env(**env), stdout=handle, stderr=subprocess.STDOUT
        )
    return Running(f"http://127.0.0.1:{port}", port, process, log)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    guarded = start(
        tmp,
        "guarded",
        *("--allow-missing-probes", "--log-level", "warning"),
        *("--max-connections", str(MAX_CONNECTIONS), "--max-concurrency", "2"),
        *("--request-head-timeout", str(HEAD_TIMEOUT)),
        *("--request-body-timeout", str(BODY_TIMEOUT)),
        *("--write-timeout", str(WRITE_TIMEOUT)),
        *("--max-response-bytes", str(MAX_RESPONSE_BYTES)),
        *("--max-unsent-response-bytes", str(MAX_UNSENT_BYTES)),
        HEADSCOPE_API_KEY=KEY,
    )
    slow = start(
        tmp,
        "slow",
        *("--allow-missing-probes", "--log-level", "warning", "--max-concurrency", "1"),
        module="tests.system.slow_serve",
        HEADSCOPE_TEST_ANALYSIS_DELAY="1",
        HEADSCOPE_TEST_ANALYSIS_LOG=str(tmp / "analyses.txt"),
    )
    try:
        for server in (guarded, slow):
            wait_until_ready(server.base_url, timeout=240, process=server.process)
        yield {"guarded": guarded, "slow": slow, "analyses": tmp / "analyses.txt"}
    finally:
        for server in (guarded, slow):
            server.process.kill()
            server.process.wait(timeout=30)


def post(server: Running, path: str, body, headers=None) -> httpx.Response:
    headers = {**AUTH, **(headers or {})}
    return httpx.post(server.base_url + path, json=body, headers=headers, timeout=60)


def story(chars: int) -> str:
    return CORPUS.read_text()[:chars]


def open_fds(process: subprocess.Popen) -> int:
    return psutil.Process(process.pid).num_fds()


def read_response(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def envelope_of(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# -- items 1 and 2: what a request may ask for --------------------------------------------------


def test_huge_selection_lists_are_4xx_never_5xx(servers):
    server = servers["guarded"]
    many = list(range(8)) * 12_500  # 100,000 entries
    cases = [
        ("/v1/activity", {"text": "Hi there.", "layers": many, "heads": many}),
        ("/v1/activity", {"text": "Hi there.", "layers": list(range(100_000))}),
        ("/v1/analyze", {"text": "Hi there.", "patterns": [{"layer": 0, "head": 0}] * 20_000}),
    ]
    for path, body in cases:
        response = post(server, path, body)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert_envelope(response)
    assert httpx.get(server.base_url + "/healthz").status_code == 200


def test_repeated_layers_heads_and_patterns_are_refused(servers):
    server = servers["guarded"]
    for path, body, named in [
        ("/v1/activity", {"text": "Hi.", "layers": [1, 2, 1]}, "layers lists 1"),
        ("/v1/activity", {"text": "Hi.", "heads": [3, 3]}, "heads lists 3"),
        (
            "/v1/analyze",
            {"text": "Hi.", "patterns": [{"layer": 0, "head": 5}] * 2},
            "layer 0 head 5",
        ),
    ]:
        error = assert_envelope(post(server, path, body), 422, "invalid_request")
        assert named in error["message"], error
    # Each once is fine.
    assert post(server, "/v1/activity", {"text": "Hi.", "layers": [1, 2]}).status_code == 200


def test_a_response_estimated_over_the_limit_is_413_naming_both(servers):
    server = servers["guarded"]
    every_head = [{"layer": layer, "head": head} for layer in range(8) for head in range(16)]
    response = post(server, "/v1/analyze", {"text": story(1800), "patterns": every_head})
    error = assert_envelope(response, 413, "response_too_large")
    detail = error["detail"]
    assert detail["max_response_bytes"] == MAX_RESPONSE_BYTES
    assert detail["estimated_bytes"] > MAX_RESPONSE_BYTES
    assert str(MAX_RESPONSE_BYTES) in error["message"]
    assert str(detail["estimated_bytes"]) in error["message"]
    # A binary format at half precision, for fewer heads, fits.
    small = post(
        server,
        "/v1/analyze",
        {"text": story(1800), "patterns": every_head[:8], "dtype": "float16"},
        headers={"Accept": "application/x-safetensors"},
    )
    assert small.status_code == 200, small.text[:300]
    assert len(small.content) < MAX_RESPONSE_BYTES


# -- item 4: connections that idle or never finish a request -------------------------------------


def test_idle_connections_are_capped_and_health_answers_through_them(servers):
    server = servers["guarded"]
    baseline = open_fds(server.process)
    idle = []
    for _ in range(4 * MAX_CONNECTIONS):
        idle.append(socket.create_connection(("127.0.0.1", server.port)))
        time.sleep(0.005)
    time.sleep(EVICTION_GRACE_SECONDS)  # past it, the idle ones may be closed to make room
    health = [httpx.get(server.base_url + "/healthz", timeout=5).status_code for _ in range(5)]
    assert health == [200] * 5
    assert open_fds(server.process) <= baseline + MAX_CONNECTIONS + 2
    for sock in idle:
        sock.close()
    deadline = time.monotonic() + 10
    while open_fds(server.process) > baseline + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_fds(server.process) <= baseline + 1
    # The evictions were logged, but not once per connection.
    assert server.output().count("closing the oldest idle one") <= 2


def test_a_request_head_sent_slowly_is_cut_off_with_408(servers):
    server = servers["guarded"]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        started = time.monotonic()
        raw = read_response(sock)
        waited = time.monotonic() - started
    status, body = envelope_of(raw)
    assert status == 408 and body["error"]["code"] == "request_timeout", raw[:300]
    assert waited < HEAD_TIMEOUT + 5


def test_a_body_sent_slowly_is_cut_off_with_408(servers):
    server = servers["guarded"]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        head = (
            "POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"text": "')
        raw = read_response(sock)
    status, body = envelope_of(raw)
    assert status == 408 and body["error"]["code"] == "request_timeout", raw[:300]


# -- item 3: clients that never read ----------------------------------------------------------


def test_clients_that_never_read_are_counted_then_dropped(servers):
    server = servers["guarded"]
    heads = [{"layer": 0, "head": head} for head in range(4)]  # answers of several MB
    body = json.dumps({"text": story(2000), "patterns": heads}).encode()
    request = (
        b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    readers = []
    for _ in range(3):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(request)
        readers.append(sock)
    # While their answers wait, new analyses are refused (429 naming the backlog)...
    deadline = time.monotonic() + 30
    refused = None
    while time.monotonic() < deadline:
        response = post(server, "/v1/tag", {"text": f"Tom ran {time.monotonic()}."})
        if response.status_code == 429:
            refused = assert_envelope(response, 429, "overloaded")
            break
        time.sleep(0.05)
    assert refused is not None and "max_unsent_response_bytes" in refused["detail"], refused
    # ...until the write timeout closes those connections (the clients still read nothing).
    time.sleep(WRITE_TIMEOUT + 1)
    for sock in readers:
        sock.settimeout(20)
        try:
            while sock.recv(1 << 20):  # what the kernel already holds, then the close
                pass
        except ConnectionResetError:
            pass
        sock.close()
    deadline = time.monotonic() + 20
    while post(server, "/v1/tag", {"text": "Tom ran home."}).status_code != 200:
        assert time.monotonic() < deadline, "the backlog never cleared"
        time.sleep(0.2)


# -- item 9: clients that leave ---------------------------------------------------------------


def test_work_for_clients_that_left_is_dropped(servers):
    server, analyses = servers["slow"], servers["analyses"]
    before = len(analyses.read_text().splitlines()) if analyses.exists() else 0
    leaving = []
    for index in range(8):
        body = json.dumps({"text": f"Story number {index} begins."}).encode()
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(
            b"POST /v1/activity HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        leaving.append(sock)
    time.sleep(0.5)  # all eight admitted: one running, seven queued
    for sock in leaving:
        sock.close()
    response = httpx.post(server.base_url + "/v1/activity", json={"text": "One more."}, timeout=60)
    assert response.status_code == 200
    ran = len(analyses.read_text().splitlines()) - before
    # The one running when they left, and this one; never the seven that were queued.
    assert ran <= 3, ran


# -- item 10: what an unauthenticated caller sees; keys with whitespace --------------------------


def test_readyz_shows_the_model_directory_name_only(servers):
    ready = httpx.get(servers["guarded"].base_url + "/readyz").json()
    assert ready["model_id"] == STANDIN_DIR.name
    assert "/" not in ready["model_id"]


def test_an_api_key_with_surrounding_whitespace_is_refused_at_start(tmp_path):
    command = [sys.executable, "-m", "headscope.cli", "serve", "--model", str(STANDIN_DIR)]
    command += ["--port", str(free_port()), "--store", str(tmp_path)]
    secret = "s3cret-value"
    result = subprocess.run(
        command,
        env=server_env(HEADSCOPE_API_KEY=f"{secret}\n"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "whitespace" in result.stderr and "HEADSCOPE_API_KEY" in result.stderr
    assert secret not in result.stderr and "Traceback" not in result.stderr
