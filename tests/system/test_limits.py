"""Promise 1, limits before work: the token limit is checked right after tokenizing, before any
forward pass or tagging, and fast even for huge texts; bodies over the cap are refused with 413
whether they declare a length or stream chunked, without the server buffering them."""

from __future__ import annotations

import json
import socket
from collections import Counter

import httpx
import psutil
import pytest

from tests.helpers import CORPUS
from tests.system.conftest import assert_envelope

CORE_TEXT_ROUTES = {
    "/v1/tag": {},
    "/v1/activity": {},
    "/v1/attention": {"layer": 1, "head": 3},
    "/v1/analyze": {"patterns": [{"layer": 0, "head": 0}]},
}


@pytest.fixture()
def work_counter(runtime, monkeypatch):
    """Counts model work: forward passes (every path goes through engine.run) and tagging."""
    calls: Counter[str] = Counter()

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(runtime.engine, "run", counting("engine", runtime.engine.run))
    for method in ("tag_tokens", "submit_tag_tokens"):  # /v1/analyze submits, the rest call
        monkeypatch.setattr(
            runtime.tagger, method, counting("tagging", getattr(runtime.tagger, method))
        )
    return calls


def text_routes(api) -> dict[str, dict]:
    """Every POST route whose body has a `text` string, with its other required fields filled
    in from the OpenAPI schema (walked, so routes added later are covered too)."""
    spec = api.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def resolve(schema: dict) -> dict:
        return schemas[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema

    def example(schema: dict):
        schema = resolve(schema)
        if "enum" in schema:
            return schema["enum"][0]
        if "anyOf" in schema:
            return example(next(s for s in schema["anyOf"] if s.get("type") != "null"))
        kind = schema.get("type")
        if kind == "array":
            return [example(schema["items"])] * schema.get("minItems", 0)
        if kind == "object":
            return {
                name: example(schema["properties"][name]) for name in schema.get("required", ())
            }
        return {"integer": 0, "number": 0.5, "string": "x", "boolean": False}[kind]

    routes = {}
    for path, operations in spec["paths"].items():
        body = operations.get("post", {}).get("requestBody")
        if body is None:
            continue
        schema = resolve(body["content"]["application/json"]["schema"])
        if schema.get("properties", {}).get("text", {}).get("type") == "string":
            routes[path] = {**example(schema), **CORE_TEXT_ROUTES.get(path, {})}
    return routes


def exactly(n_tokens: int, runtime) -> str:
    """Real story text cut to exactly `n_tokens` tokens (checked with the tokenizer itself)."""
    words = CORPUS.read_text()[: n_tokens * 8].split(" ")
    text = ""
    for word in words:
        candidate = f"{text} {word}" if text else word
        if len(runtime.tokenizer(candidate)["input_ids"]) > n_tokens:
            break
        text = candidate
    while len(runtime.tokenizer(text)["input_ids"]) < n_tokens:
        text += " cat"
    assert len(runtime.tokenizer(text)["input_ids"]) == n_tokens
    return text


def test_text_routes_are_found(api):
    assert set(CORE_TEXT_ROUTES) <= set(text_routes(api))


def test_512_tokens_pass_and_do_model_work(api, runtime, work_counter):
    text = " cat" * 512
    assert len(runtime.tokenizer(text)["input_ids"]) == 512
    for path, fields in CORE_TEXT_ROUTES.items():
        response = api.post(path, json={"text": text, **fields})
        assert response.status_code == 200, (path, response.text[:300])
        assert len(response.json()["tokens"]) == 512
    # The counters see real work, so the zero counts below mean something.
    assert work_counter["engine"] >= 3
    assert work_counter["tagging"] >= 2


@pytest.mark.parametrize("n_tokens", [513, 100_000])
def test_over_the_limit_is_413_with_no_model_work(probes_api, runtime, work_counter, n_tokens):
    api = probes_api  # with a probe run loaded, so /v1/probes/predict gets as far as the text
    texts = {"repeated": " cat" * n_tokens}
    if n_tokens == 513:
        texts["story"] = exactly(513, runtime)
    for path, fields in text_routes(api).items():
        for kind, text in texts.items():
            # No forward pass or tagging ran (work_counter, below), and a 100k-token text is
            # refused before it is tokenized to the end (tokens_at_least): how fast that is,
            # is measured in bench/, not here.
            response = api.post(path, json={**fields, "text": text})
            error = assert_envelope(response, 413, "input_too_long")
            detail = error["detail"]
            assert detail["max_tokens"] == 512
            if "tokens" in detail:  # counted to the end: the exact count
                assert detail["tokens"] == n_tokens, (path, kind, error)
            else:  # stopped counting: a lower bound, honestly named
                assert 512 < detail["tokens_at_least"] <= n_tokens, (path, kind, error)
                assert "more than 512 tokens" in error["message"]
    assert work_counter == Counter(), work_counter


def test_a_count_that_stopped_early_is_a_true_lower_bound(runtime):
    """Every shortcut in encode under-counts, never over-counts (checked against the tokenizer
    on texts whose tokens are long, short, and ordinary)."""
    from headscope.errors import InputTooLong

    texts = [
        CORPUS.read_text()[:60_000],
        "-" * 64 * 600,  # 64-character tokens
        "x" + "\n" * 9000,  # one token per newline pair
        "é" * 5000,
        "word " * 2000 + "x" * 70_000,
        ("<|endoftext|>" * 100 + " ") * 10,
    ]
    for text in texts:
        true_count = len(runtime.tokenizer(text)["input_ids"])
        with pytest.raises(InputTooLong) as raised:
            runtime.encode(text)
        detail = raised.value.detail
        reported = detail.get("tokens", detail.get("tokens_at_least"))
        assert 512 < reported <= true_count, (text[:20], detail, true_count)
        if "tokens" in detail:
            assert reported == true_count


def test_texts_just_under_the_limit_tokenize_exactly(runtime):
    for text in ["-" * 64 * 512, exactly(512, runtime), "a" + " " * 400 + "b"]:
        encoded = runtime.encode(text)
        assert encoded.ids == runtime.tokenizer(text)["input_ids"]


def test_body_over_the_cap_with_content_length_is_413(api):
    body = json.dumps({"text": "a" * 1_000_000}).encode()
    assert len(body) > 1_000_000
    response = api.post("/v1/tag", content=body, headers={"content-type": "application/json"})
    error = assert_envelope(response, 413, "body_too_large")
    assert error["detail"] == {"max_bytes": 1_000_000}


def raw_request(base_url: str, head: bytes, chunks, read_timeout: float = 10.0) -> bytes:
    """Send a request over a bare socket (so nothing buffers or fixes it) and read the reply;
    stops sending when the server answers or closes."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered early and closed: read what it said
        received = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
                if b"\r\n\r\n" in received:
                    head_part, _, rest = received.partition(b"\r\n\r\n")
                    length = [
                        int(line.split(b":")[1])
                        for line in head_part.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ]
                    if length and len(rest) >= length[0]:
                        break
        except OSError:
            pass
        return received


def parse_reply(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body)


def test_chunked_body_over_the_cap_is_413_without_buffering(hardened_server, runtime):
    base_url = hardened_server.base_url
    head = (
        b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"a" * 65536
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    prefix = b'{"text": "'
    opening = b"%x\r\n%s\r\n" % (len(prefix), prefix)

    # Stops after 1.5 MB: the reply must already be a 413.
    status, body = parse_reply(
        raw_request(base_url, head, [opening, *[framed] * 23], read_timeout=20)
    )
    assert status == 413 and body["error"]["code"] == "body_too_large"

    # 200 MB offered: the server reads about its cap, answers, closes; its memory barely moves.
    process = psutil.Process()
    before = process.memory_info().rss
    reply = raw_request(base_url, head, (framed for _ in range(3200)), read_timeout=20)
    growth = process.memory_info().rss - before
    assert parse_reply(reply)[0] == 413
    assert growth < 30 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB"

    # A declared Content-Length over the cap is refused before any of the body is read.
    declared = (
        b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 500000000\r\n\r\n"
    )
    status, body = parse_reply(raw_request(base_url, declared, [prefix]))
    assert status == 413 and body["error"]["detail"] == {"max_bytes": 1_000_000}
    assert httpx.get(f"{base_url}/healthz").status_code == 200


# Hand-made bodies every JSON route must refuse with a 4xx envelope.
BAD_BODIES = {
    "invalid UTF-8": b'{"text": "\xff\xfe abc"}',
    "lone surrogate": b'{"text": "a\\ud800b", "layer": 0, "head": 0}',
    "surrogate field name": b'{"text": "a", "\\udc00": 1}',
    "empty array": b"[]",
    "null": b"null",
    "a string": b'"hello"',
    "a number": b"3",
    "empty body": b"",
    "deeply nested array": b"[" * 100_000 + b"]" * 100_000,
    "deeply nested value": b'{"text": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    "NaN layer": b'{"text": "hi", "layer": NaN, "head": 0}',
    "Infinity head": b'{"text": "hi", "layer": 0, "head": -Infinity}',
    "huge layer": b'{"text": "hi", "layer": 99999999999999999999999999999, "head": 0}',
    "5000-digit head": b'{"text": "hi", "layer": 0, "head": ' + b"9" * 5000 + b"}",
    "negative head": b'{"text": "hi", "layer": 0, "head": -1}',
    "unknown field": b'{"text": "hi", "layer": 0, "head": 0, "colour": "red"}',
    "text not a string": b'{"text": ["hi"], "layer": 0, "head": 0}',
    "empty text": b'{"text": "", "layer": 0, "head": 0}',
    "whitespace text": b'{"text": " \\n\\t ", "layer": 0, "head": 0}',
    "truncated JSON": b'{"text": "hi", "lay',
}


def json_routes(api) -> list[str]:
    spec = api.get("/openapi.json").json()
    return [path for path, ops in spec["paths"].items() if "requestBody" in ops.get("post", {})]


def test_hand_made_bad_bodies_are_4xx_envelopes(api):
    def post(path: str, name: str):
        return api.post(
            path, content=BAD_BODIES[name], headers={"content-type": "application/json"}
        )

    routes = json_routes(api)
    assert "/v1/attention" in routes
    for path in routes:
        for name in BAD_BODIES:
            response = post(path, name)
            assert 400 <= response.status_code < 500, (path, name, response.text[:300])
            assert_envelope(response)
    attention = "/v1/attention"
    assert_envelope(post(attention, "huge layer"), 422, "unknown_head")
    assert_envelope(post(attention, "negative head"), 422, "unknown_head")
    assert_envelope(post(attention, "unknown field"), 422, "invalid_request")
    assert_envelope(post(attention, "deeply nested array"), 400, "invalid_json")
    assert_envelope(post(attention, "invalid UTF-8"), 400, "invalid_json")
    assert_envelope(post(attention, "truncated JSON"), 400, "invalid_json")
    assert_envelope(post(attention, "empty text"), 400, "empty_text")


def texts_routes(api) -> list[str]:
    """POST routes that take a `texts` list (the corpus endpoints), walked from the spec."""
    spec = api.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    found = []
    for path, operations in spec["paths"].items():
        body = operations.get("post", {}).get("requestBody")
        if body is None:
            continue
        ref = body["content"]["application/json"]["schema"].get("$ref", "")
        schema = schemas.get(ref.rsplit("/", 1)[-1], {})
        if "texts" in schema.get("properties", {}):
            found.append(path)
    return found


def test_corpus_routes_cap_sequences_and_tokens_before_work(api, settings, work_counter):
    routes = texts_routes(api)
    assert routes, "no route takes `texts`"
    extra = {  # what each corpus route needs besides its texts
        "/v1/corpus/attention-by-tag": {"layer": 2, "head": 0, "from_tag": "NN"},
        "/v1/corpus/activity-by-tag": {"tag": "NN"},
        "/v1/corpus/ablation": {"heads": [{"layer": 2, "head": 0}]},
    }
    too_many = ["A cat sat."] * (settings.corpus_max_sequences + 1)
    for path in routes:
        fields = extra.get(path, {})
        for texts in (too_many, ["A cat sat.", " cat" * 100_000]):
            response = api.post(path, json={**fields, "texts": texts})
            assert_envelope(response, 413)
    assert work_counter == Counter(), work_counter
