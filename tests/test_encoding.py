"""Fast encodings (orjson from numpy, safetensors, npy, float16, rounding) against the plain
pydantic path: every number decodes to the same float32 (or its declared rounding)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from headscope.encoding import NPY, SAFETENSORS, NotAcceptable, decode_safetensors, negotiate
from headscope.schemas import (
    ActivityRequest,
    ActivityResponse,
    AnalyzeRequest,
    AnalyzeResponse,
    AttentionRequest,
    AttentionResponse,
)

HEADS = [{"layer": 1, "head": 2}, {"layer": 6, "head": 15}]


def plain_analyze(runtime, text):
    """The plain path: pydantic models of Python floats, no cache involved."""
    runtime.cache.clear()
    return runtime.analyze(AnalyzeRequest(text=text, patterns=HEADS))


def as_float32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def test_json_is_the_plain_response_to_the_float32_bit(api, runtime, long_text):
    plain = plain_analyze(runtime, long_text)
    response = api.post("/v1/analyze", json={"text": long_text, "patterns": HEADS})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    fast = AnalyzeResponse.model_validate_json(response.content)  # the schema still holds
    assert fast.tokens == plain.tokens
    assert np.array_equal(as_float32(fast.activity), as_float32(plain.activity))
    for fast_head, plain_head in zip(fast.patterns, plain.patterns, strict=True):
        assert (fast_head.layer, fast_head.head) == (plain_head.layer, plain_head.head)
        assert np.array_equal(as_float32(fast_head.pattern), as_float32(plain_head.pattern))
    # And the plain path's numbers are the engine's float32 values exactly.
    engine = runtime.engine.run(torch.tensor([[token.id for token in plain.tokens]]))
    assert np.array_equal(as_float32(plain.activity), engine.activity[0].numpy())


def test_safetensors_decodes_to_the_json_numbers(api, long_text):
    body = {"text": long_text, "patterns": HEADS}
    json_response = AnalyzeResponse.model_validate_json(api.post("/v1/analyze", json=body).content)
    response = api.post("/v1/analyze", json=body, headers={"Accept": SAFETENSORS})
    assert response.status_code == 200
    assert response.headers["content-type"] == SAFETENSORS
    decoded = decode_safetensors(response.content)
    assert decoded["activity"].dtype == np.float32
    assert np.array_equal(decoded["activity"], as_float32(json_response.activity))
    for item, head in zip(decoded["patterns"], json_response.patterns, strict=True):
        assert (item["layer"], item["head"]) == (head.layer, head.head)
        assert np.array_equal(item["pattern"], as_float32(head.pattern))
    assert [token["tag"] for token in decoded["tokens"]] == [t.tag for t in json_response.tokens]


def test_npy_for_single_array_endpoints(api, short_text):
    body = {"text": short_text, "layers": [0, 4], "heads": [3, 1]}
    as_json = ActivityResponse.model_validate_json(api.post("/v1/activity", json=body).content)
    response = api.post("/v1/activity", json=body, headers={"Accept": NPY})
    assert response.status_code == 200 and response.headers["content-type"] == NPY
    array = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert array.shape == (2, 2, len(as_json.tokens))
    assert np.array_equal(array, as_float32(as_json.activity))

    body = {"text": short_text, "layer": 3, "head": 5, "query": 2}
    as_json = AttentionResponse.model_validate_json(api.post("/v1/attention", json=body).content)
    array = np.load(
        io.BytesIO(api.post("/v1/attention", json=body, headers={"Accept": NPY}).content)
    )
    assert array.shape == (1, len(as_json.tokens))
    assert np.array_equal(array, as_float32(as_json.pattern))


def test_float16_and_decimals_round_the_plain_numbers(api, runtime, short_text):
    runtime.cache.clear()
    plain = runtime.activity(ActivityRequest(text=short_text))
    exact = as_float32(plain.activity)
    half = api.post("/v1/activity", json={"text": short_text, "dtype": "float16"}).json()
    assert np.array_equal(np.asarray(half["activity"], dtype=np.float16), exact.astype(np.float16))
    rounded = api.post("/v1/activity", json={"text": short_text, "decimals": 3}).json()
    assert np.array_equal(as_float32(rounded["activity"]), np.round(exact, 3))
    full = api.post("/v1/activity", json={"text": short_text})
    assert len(api.post("/v1/activity", json={"text": short_text, "decimals": 3}).content) < len(
        full.content
    )
    binary = api.post(
        "/v1/activity", json={"text": short_text, "dtype": "float16"}, headers={"Accept": NPY}
    )
    array = np.load(io.BytesIO(binary.content))
    assert array.dtype == np.float16 and np.array_equal(array, exact.astype(np.float16))


@pytest.mark.parametrize(
    ("field", "value"), [("dtype", "float64"), ("decimals", -1), ("decimals", 9), ("decimals", 2.5)]
)
def test_bad_output_options_are_422_envelopes(api, field, value):
    response = api.post("/v1/activity", json={"text": "Hello there.", field: value})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_npy_for_analyze_is_406_envelope(api):
    response = api.post("/v1/analyze", json={"text": "Hello there."}, headers={"Accept": NPY})
    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable"


@pytest.mark.parametrize(
    ("accept", "single", "expected"),
    [
        (None, True, "application/json"),
        ("*/*", False, "application/json"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", True, "application/json"),
        ("application/x-npy", True, NPY),
        ("application/x-npy;q=0.5, application/x-safetensors", True, SAFETENSORS),
        ("application/x-npy, application/json;q=0.1", False, "application/json"),
        ("application/safetensors", False, SAFETENSORS),
        ("application/x-npy;q=0", True, "application/json"),
    ],
)
def test_negotiation(accept, single, expected):
    assert negotiate(accept, has_single_array=single) == expected


def test_negotiation_refuses_npy_alone_for_several_arrays():
    with pytest.raises(NotAcceptable):
        negotiate("application/x-npy", has_single_array=False)


def test_openapi_documents_json_and_binary(api):
    spec = api.get("/openapi.json").json()
    analyze = spec["paths"]["/v1/analyze"]["post"]["responses"]
    assert analyze["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "AnalyzeResponse"
    )
    assert SAFETENSORS in analyze["200"]["content"]
    activity = spec["paths"]["/v1/activity"]["post"]["responses"]["200"]["content"]
    assert {"application/json", SAFETENSORS, NPY} <= set(activity)


def test_sparse_patterns_keep_exactly_the_largest_weights(api, runtime, long_text):
    body = {"text": long_text, "layer": 3, "head": 5}
    dense = np.asarray(api.post("/v1/attention", json=body).json()["pattern"], dtype=np.float32)
    top = api.post("/v1/attention", json={**body, "top_k": 3}).json()["pattern"]
    top = np.asarray(top, dtype=np.float32)
    kth = np.sort(dense, axis=-1)[:, -3:-2]  # each row's 3rd largest weight
    assert np.array_equal(top, np.where(dense >= kth, dense, 0.0))
    assert np.all((top > 0).sum(axis=-1) >= np.minimum(3, np.arange(1, len(dense) + 1)))

    cut = api.post("/v1/attention", json={**body, "threshold": 0.05}).json()["pattern"]
    assert np.array_equal(np.asarray(cut, dtype=np.float32), np.where(dense >= 0.05, dense, 0.0))

    # The plain pydantic path answers the same sparse question with the same numbers.
    runtime.cache.clear()
    plain = runtime.attention(AttentionRequest(**body, top_k=3))
    assert np.array_equal(as_float32(plain.pattern), top)


def test_sparse_analyze_patterns_and_safetensors(api, long_text):
    body = {"text": long_text, "patterns": HEADS, "top_k": 2, "threshold": 0.2}
    as_json = api.post("/v1/analyze", json=body).json()
    binary = decode_safetensors(
        api.post("/v1/analyze", json=body, headers={"Accept": SAFETENSORS}).content
    )
    for item, head in zip(binary["patterns"], as_json["patterns"], strict=True):
        pattern = np.asarray(head["pattern"], dtype=np.float32)
        assert np.array_equal(item["pattern"], pattern)
        assert np.all((pattern > 0).sum(axis=-1) <= 2 + 1)  # top 2 (a tie may add one)
        assert np.all((pattern == 0) | (pattern >= 0.2))


@pytest.mark.parametrize(("field", "value"), [("top_k", 0), ("threshold", 1.5), ("threshold", -1)])
def test_bad_sparsity_options_are_422_envelopes(api, field, value):
    body = {"text": "Hello there.", "layer": 0, "head": 0, field: value}
    response = api.post("/v1/attention", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    "shape",
    [(0,), (0, 3), (3, 0), (5,), (4097,), (1, 4097), (4097, 1), (3, 5000), (8, 16, 128),
     (300, 300), (1, 300, 300), (16, 64, 64), (2, 16, 70, 70)],
)  # fmt: skip
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_json_written_in_slices_is_byte_for_byte_one_orjson_call(shape, dtype):
    import orjson

    from headscope.encoding import ORJSON_OPTIONS, _array_json, encode_json

    array = np.random.default_rng(0).random(shape, dtype=np.float32).astype(dtype)
    assert _array_json(array) == orjson.dumps(array, option=ORJSON_OPTIONS)
    payload = {
        "tokens": [{"index": 0, "text": 'a"b', "tag": None}],
        "array": array,
        "transposed": array.T,  # not C-contiguous
        "patterns": [{"layer": 1, "pattern": array}],
    }
    plain = {**payload, "transposed": np.ascontiguousarray(array.T)}
    assert encode_json(payload) == orjson.dumps(plain, option=ORJSON_OPTIONS)
