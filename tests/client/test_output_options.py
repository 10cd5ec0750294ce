"""The server's output options through the client: dtype, decimals, top_k, threshold, and the
safetensors and npy answers, against a real server on 127.0.0.1 (the trained stand-in).

The JSON path is checked against the raw JSON httpx gets for the same request, the options
against numpy applied to the dense float32 answer, and the binary path against the JSON path to
the last bit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import httpx
import numpy as np
import pytest

from headscope_client import (
    ActivityResult,
    AnalyzeResult,
    APIResponseValidationError,
    AttentionResult,
    Client,
)
from tests.client.conftest import Step

TEXT = 'Lily said, "I want to play outside." Her mom smiled and said yes, and they ran out.'
ALL_HEADS = [(layer, head) for layer in range(8) for head in range(16)]


def bits(array: np.ndarray) -> np.ndarray:
    """The array's bytes as unsigned integers: equal only when every number is bit-equal."""
    return array.view({2: np.uint16, 4: np.uint32}[array.itemsize])


def top_k(dense: np.ndarray, k: int) -> np.ndarray:
    """Each row's k largest weights (ties at the k-th all kept), every other weight 0."""
    kth = -np.sort(-dense, axis=-1)[..., k - 1 : k]
    return np.where(dense >= kth, dense, 0).astype(dense.dtype)


def raw(base_url: str, path: str, body: dict, accept: str = "application/json") -> httpx.Response:
    response = httpx.post(base_url + path, json=body, headers={"Accept": accept}, timeout=30)
    assert response.status_code == 200, response.text
    return response


def test_safetensors_equals_json_to_the_last_bit_for_every_array(client):
    as_json = client.analyze(TEXT, patterns=ALL_HEADS)
    as_binary = client.analyze(TEXT, patterns=ALL_HEADS, format="safetensors")
    assert isinstance(as_binary, AnalyzeResult)
    assert as_binary.tokens == as_json.tokens
    assert [(p.layer, p.head) for p in as_binary.patterns] == ALL_HEADS

    activity = as_binary.to_numpy()  # [layer, head, token]
    assert activity.dtype == np.float32 and as_json.to_numpy().dtype == np.float32
    np.testing.assert_array_equal(bits(activity), bits(as_json.to_numpy()))
    patterns = as_binary.patterns_to_numpy()  # [pattern, query, key]
    assert patterns.shape == (128, len(as_json.tokens), len(as_json.tokens))
    np.testing.assert_array_equal(bits(patterns), bits(as_json.patterns_to_numpy()))
    # Straight from the buffer: the result holds the array, to_numpy() hands it over.
    assert as_binary.to_numpy() is as_binary.activity
    # Dumped, a binary result reads as JSON: the same numbers, as lists.
    dumped = as_binary.model_dump()
    assert np.array_equal(np.float32(dumped["activity"]), as_json.to_numpy())
    assert as_binary == client.analyze(TEXT, patterns=ALL_HEADS, format="safetensors")


def test_activity_options_equal_the_raw_json_and_the_binary_answers(client, live_server):
    options = {"layers": [1, 6], "heads": [0, 15], "dtype": "float16", "decimals": 3}
    result = client.activity(TEXT, **options)
    assert isinstance(result, ActivityResult)
    assert result.model_dump() == raw(live_server, "/v1/activity", {"text": TEXT, **options}).json()
    assert result.to_numpy().dtype == np.float16

    exact = client.activity(TEXT, layers=[1, 6], heads=[0, 15]).to_numpy()  # float32
    expected = np.round(exact, 3).astype(np.float16)
    np.testing.assert_array_equal(bits(result.to_numpy()), bits(expected))

    binary = client.activity(TEXT, **options, format="safetensors")
    assert binary.activity.dtype == np.float16 and binary.layers == [1, 6]
    np.testing.assert_array_equal(bits(binary.to_numpy()), bits(expected))

    array = client.activity(TEXT, **options, format="npy")
    assert isinstance(array, np.ndarray) and array.dtype == np.float16
    np.testing.assert_array_equal(bits(array), bits(expected))


def test_sparse_attention_keeps_the_top_k_weights_of_each_row(client, live_server):
    dense = client.attention(TEXT, 2, 5).to_numpy()  # [query, key]
    sparse = client.attention(TEXT, 2, 5, top_k=3, threshold=0.05)
    assert isinstance(sparse, AttentionResult)
    body = {"text": TEXT, "layer": 2, "head": 5, "top_k": 3, "threshold": 0.05}
    assert sparse.model_dump() == raw(live_server, "/v1/attention", body).json()

    expected = np.where(dense >= 0.05, top_k(dense, 3), 0).astype(np.float32)
    np.testing.assert_array_equal(bits(sparse.to_numpy()), bits(expected))

    binary = client.attention(TEXT, 2, 5, top_k=3, threshold=0.05, format="safetensors")
    np.testing.assert_array_equal(bits(binary.to_numpy()), bits(sparse.to_numpy()))
    row = client.attention(TEXT, 2, 5, query=4, top_k=1, format="npy")
    assert row.shape == (1, dense.shape[1])
    np.testing.assert_array_equal(bits(row), bits(top_k(dense[4:5], 1)))


def test_analyze_options_apply_to_patterns_and_activity(client, live_server):
    heads = [(0, 3), (5, 9)]
    options = {"dtype": "float16", "top_k": 2}
    result = client.analyze(TEXT, patterns=heads, **options)
    body = {"text": TEXT, "patterns": [{"layer": 0, "head": 3}, {"layer": 5, "head": 9}]}
    assert result.model_dump() == raw(live_server, "/v1/analyze", {**body, **options}).json()
    assert result.pattern(5, 9).dtype == np.float16
    dense = client.analyze(TEXT, patterns=heads)
    for layer, head in heads:
        expected = top_k(dense.pattern(layer, head), 2).astype(np.float16)
        np.testing.assert_array_equal(bits(result.pattern(layer, head)), bits(expected))
    np.testing.assert_array_equal(
        bits(result.to_numpy()), bits(dense.to_numpy().astype(np.float16))
    )

    binary = client.analyze(TEXT, patterns=heads, **options, format="safetensors")
    np.testing.assert_array_equal(bits(binary.pattern(5, 9)), bits(result.pattern(5, 9)))
    np.testing.assert_array_equal(bits(binary.to_numpy()), bits(result.to_numpy()))


def test_auto_picks_safetensors_when_numpy_and_safetensors_are_installed(client):
    result = client.analyze(TEXT, patterns=[(1, 1)], format="auto")
    assert isinstance(result.activity, np.ndarray)


def test_formats_a_method_cannot_give_are_refused_before_sending(client):
    with pytest.raises(ValueError, match="format must be one of json, safetensors, auto"):
        client.analyze(TEXT, format="npy")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="format must be one of"):
        client.activity(TEXT, format="csv")  # type: ignore[call-overload]


def test_a_damaged_safetensors_body_is_a_validation_error(scripted):
    broken = Step(text="not safetensors", headers={"content-type": "application/x-safetensors"})
    scripted.reset({"/v1/analyze": [broken]})
    unreadable = pytest.raises(APIResponseValidationError, match="unreadable safetensors body")
    with Client(scripted.base_url, max_retries=0) as client, unreadable:
        client.analyze(TEXT, format="safetensors")
    accept = scripted.log[0][3]["accept"]
    assert accept == "application/x-safetensors"


async def test_async_client_reads_the_same_binary_answers(aclient, client):
    options = {"patterns": [(3, 3)], "dtype": "float16", "decimals": 2, "format": "safetensors"}
    result = await aclient.analyze(TEXT, **options)
    assert result == client.analyze(TEXT, **options)
    array = await aclient.attention(TEXT, 3, 3, format="npy", dtype="float16", decimals=2)
    np.testing.assert_array_equal(bits(array), bits(result.pattern(3, 3)))


def fresh_python(code: str) -> str:
    """`code` run in a new interpreter (nothing imported yet); what it printed."""
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_the_binary_path_and_the_frames_pull_in_no_torch(live_server):
    printed = fresh_python(
        f"""
        import json, sys
        from headscope_client import Client
        with Client({live_server!r}) as client:
            result = client.analyze('Tom ran.', patterns=[(0, 0)], format='safetensors')
            result.to_numpy(); result.to_pandas(); client.analyze_many(['Sue sat.'])
        heavy = ['torch', 'transformers', 'fastapi', 'starlette', 'uvicorn', 'orjson']
        print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
        """
    )
    assert json.loads(printed) == []


def test_without_safetensors_auto_is_json_and_safetensors_says_what_to_install(live_server):
    printed = fresh_python(
        f"""
        import sys
        sys.modules['safetensors'] = None  # as if it were not installed
        from headscope_client import Client
        with Client({live_server!r}) as client:
            [result] = client.analyze_many(['Tom ran.'])
            print(type(result.activity).__name__)
            try:
                client.analyze('Tom ran.', format='safetensors')
            except ImportError as error:
                print(error)
        """
    )
    kind, hint = printed.splitlines()
    assert kind == "list"
    assert "pip install 'headscope[numpy]'" in hint
