"""A hung tagger child (issue 14, item 6) against a real `headscope serve` process: it is found by
its heartbeat in seconds and replaced; the requests that need tags get 503 with Retry-After,
those that need none never wait on it, and /readyz says how the tagger is."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from tests.helpers import CORPUS, STANDIN_DIR, serve_process
from tests.system.conftest import assert_envelope

# The old behaviour: every request waited two minutes on a stopped child. Detection takes the
# child's hang timeout; the bound leaves room for a busy machine.
DETECTED_WITHIN_S = 30


def tagger_child(server: int) -> psutil.Process:
    [child] = [
        process
        for process in psutil.Process(server).children()
        if "headscope.tagging.child" in process.cmdline()
    ]
    return child


def texts(count: int) -> list[str]:
    paragraphs = [p.strip() for p in CORPUS.read_text().split("\n\n") if len(p.strip()) > 200]
    return [paragraph[:600] for paragraph in paragraphs[:count]]


class ReadyzWatcher:
    """Polls /readyz in a thread and keeps every tagger state it saw."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.seen: list[tuple[int, str | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self.stop.is_set():
                response = client.get("/readyz")
                self.seen.append((response.status_code, response.json().get("tagger")))
                time.sleep(0.01)

    def __enter__(self) -> ReadyzWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.mark.slow
def test_a_stopped_tagger_child_is_replaced_and_holds_up_no_other_request(tmp_path):
    args = ("--model", str(STANDIN_DIR), "--allow-missing-probes", "--store", str(tmp_path))
    with serve_process(*args, "--log-level", "warning", ready_timeout=240) as (base_url, server):
        sample = texts(8)
        with httpx.Client(base_url=base_url, timeout=120) as client:
            assert client.get("/readyz").json()["tagger"] == "ready"
            assert client.post("/v1/analyze", json={"text": sample[0]}).status_code == 200
            child = tagger_child(server.pid)

            child.suspend()  # SIGSTOP
            stopped_at = time.monotonic()
            with ReadyzWatcher(base_url) as readyz, ThreadPoolExecutor(6) as clients:
                # More requests that need tags than the pool has analysis threads (2).
                waiting = [
                    clients.submit(client.post, "/v1/analyze", json={"text": text})
                    for text in sample[1:6]
                ] + [clients.submit(client.post, "/v1/tag", json={"text": sample[6]})]
                time.sleep(0.3)  # let them reach the server
                activity = client.post("/v1/activity", json={"text": sample[7]})
                attention = client.post(
                    "/v1/attention", json={"text": sample[7], "layer": 1, "head": 3}
                )
                # Answered while every request that needs tags still waits for them.
                assert activity.status_code == 200 and attention.status_code == 200
                assert not any(request.done() for request in waiting)

                answers = [request.result() for request in waiting]
                detected_after = time.monotonic() - stopped_at
                for answer in answers:
                    assert_envelope(answer, 503, "not_ready")
                    assert answer.headers["Retry-After"]
                assert detected_after < DETECTED_WITHIN_S
                child.wait(timeout=30)  # killed, and reaped by the server

                # Back once a new child answers.
                deadline = time.monotonic() + 240
                while client.get("/readyz").json()["tagger"] != "ready":
                    assert time.monotonic() < deadline, "the tagger never came back"
                    time.sleep(0.05)
            # /readyz stayed 200 (the model is loaded; tag-free routes answer) and said the
            # tagger was not answering until the new one was.
            states = [state for _, state in readyz.seen]
            assert {status for status, _ in readyz.seen} == {200}
            assert {"unresponsive", "starting"} & set(states), states
            assert states[-1] == "ready" or client.get("/readyz").json()["tagger"] == "ready"

            replacement = tagger_child(server.pid)
            assert replacement.pid != child.pid
            analyzed = client.post("/v1/analyze", json={"text": sample[1]})
            assert analyzed.status_code == 200
            assert all(token["tag"] for token in analyzed.json()["tokens"])
