"""`headscope serve --engine ray`: the app as a Ray Serve deployment of two replicas on a local
Ray instance (127.0.0.1) answers the same requests with the same bytes as one in-process app."""

from __future__ import annotations

import socket

import httpx
import pytest

REQUESTS = [
    ("GET", "/v1/model", None),
    ("POST", "/v1/tag", {"text": 'Tom said, "I like the lake." Then he ran.'}),
    ("POST", "/v1/activity", {"text": "Lily walked to the park.", "layers": [6], "heads": [4]}),
    (
        "POST",
        "/v1/analyze",
        {"text": "His dog ate the bone.", "patterns": [{"layer": 5, "head": 5}]},
    ),
    ("POST", "/v1/attention", {"text": "She said hi.", "layer": 2, "head": 0, "query": 2}),
    ("POST", "/v1/tag", {"text": ""}),  # an error: the same envelope
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_served(ray_cluster, settings):
    from ray import serve

    from headscope.cli.serve_ray import start

    served = settings.model_copy(update={"host": "127.0.0.1", "port": free_port()})
    start(served, replicas=2)
    yield f"http://127.0.0.1:{served.port}"
    serve.shutdown()


def test_replicas_answer_with_the_same_bytes(ray_served, api):
    from ray import serve

    status = serve.status().applications["headscope"]
    replicas = status.deployments["HeadscopeReplica"].replica_states
    assert replicas.get("RUNNING") == 2
    with httpx.Client(base_url=ray_served, timeout=60) as client:
        for _ in range(3):  # enough requests that both replicas answer some
            for method, path, body in REQUESTS:
                ours = client.request(method, path, json=body)
                theirs = api.request(method, path, json=body)
                assert ours.status_code == theirs.status_code, (path, ours.text)
                assert ours.content == theirs.content, path
