"""Every core method of the sync client against a real server on 127.0.0.1 (the trained stand-in),
each result checked against the raw JSON that httpx gets for the same request and, for numbers,
against the runtime's own forward pass."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from headscope_client import ActivityResult, AnalyzeResult, AttentionResult, TagResult

TEXT = 'Lily said, "I want to play outside." Her mom smiled and said yes.'


def raw(base_url: str, path: str, body: dict | None = None) -> dict:
    if body is None:
        return httpx.get(base_url + path, timeout=30).json()
    return httpx.post(base_url + path, json=body, timeout=30).json()


def test_health_ready_and_model(client, runtime):
    assert client.health().status == "ok"
    ready = client.ready()
    assert ready.ready is True
    # /readyz is unauthenticated: the model's directory name, never its full path.
    assert ready.model_id == Path(runtime.files.model_id).name
    assert ready.probes in ("loaded", "unavailable")
    info = client.model()
    assert (info.n_layers, info.n_heads, info.d_head, info.d_model) == (8, 16, 4, 64)
    assert info.weights_sha256 == runtime.weights_sha256
    assert info.attention_layers == ["global", "local"] * 4


def test_tag_equals_raw_json_and_converts_to_a_token_table(client, live_server):
    result = client.tag(TEXT)
    assert isinstance(result, TagResult)
    assert result.model_dump() == raw(live_server, "/v1/tag", {"text": TEXT})
    opening_quote = next(token for token in result.tokens if '"' in token.text)
    assert opening_quote.tag == "``"

    frame = result.to_pandas()
    assert list(frame.columns) == ["id", "text", "start", "end", "tag"]
    assert frame.index.name == "token"
    assert len(frame) == len(result.tokens)
    assert "".join(frame["text"]) == TEXT

    paper = client.tag(TEXT, alignment="paper")
    assert paper.model_dump() == raw(live_server, "/v1/tag", {"text": TEXT, "alignment": "paper"})


def test_activity_selection_to_numpy_matches_the_forward_pass(client, live_server, runtime):
    result = client.activity(TEXT, layers=[0, 5], heads=(1, 3, 15))
    assert isinstance(result, ActivityResult)
    assert result.layers == [0, 5] and result.heads == [1, 3, 15]
    body = {"text": TEXT, "layers": [0, 5], "heads": [1, 3, 15]}
    assert result.model_dump() == raw(live_server, "/v1/activity", body)

    array = result.to_numpy()  # [layer, head, token]
    # The engine's own dtype: each JSON number is the shortest decimal of a float32.
    assert array.shape == (2, 3, len(result.tokens)) and array.dtype == np.float32
    assert result.to_numpy(np.float64).dtype == np.float64
    expected = runtime.forward(runtime.encode(TEXT)).activity  # [layer, head, token]
    np.testing.assert_allclose(array, expected[[0, 5]][:, [1, 3, 15]], atol=1e-5)
    np.testing.assert_allclose(result.head_activity(5, 15), expected[5, 15], atol=1e-5)

    frame = result.to_pandas(layout="wide")
    assert [c for c in frame.columns if c.startswith("L")] == [
        "L0H1", "L0H3", "L0H15", "L5H1", "L5H3", "L5H15"
    ]  # fmt: skip
    np.testing.assert_allclose(frame["L5H3"].to_numpy(), expected[5, 3], atol=1e-5)

    everything = client.activity(TEXT)
    assert everything.to_numpy().shape == (8, 16, len(everything.tokens))


def test_attention_full_pattern_and_one_query_row(client, live_server, runtime):
    result = client.attention(TEXT, 3, 7)
    assert isinstance(result, AttentionResult)
    assert result.model_dump() == raw(
        live_server, "/v1/attention", {"text": TEXT, "layer": 3, "head": 7}
    )
    pattern = result.to_numpy()  # [query, key]
    n_tokens = len(result.tokens)
    assert pattern.shape == (n_tokens, n_tokens)
    np.testing.assert_allclose(pattern.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.triu(pattern, k=1) == 0)  # causal

    row = client.attention(TEXT, layer=3, head=7, query=5)
    assert row.query == 5
    np.testing.assert_allclose(row.to_numpy(), pattern[5:6], atol=1e-6)

    encoded = runtime.encode(TEXT)
    expected = runtime.forward(encoded, last_layer=3, patterns=[(3, 7)]).patterns[(3, 7)]
    np.testing.assert_allclose(pattern, expected, atol=1e-5)


def test_analyze_with_heads_given_three_ways(client, live_server):
    result = client.analyze(TEXT, patterns=[(0, 1), {"layer": 2, "head": 3}])
    assert isinstance(result, AnalyzeResult)
    body = {"text": TEXT, "patterns": [{"layer": 0, "head": 1}, {"layer": 2, "head": 3}]}
    assert result.model_dump() == raw(live_server, "/v1/analyze", body)
    n_tokens = len(result.tokens)
    assert result.to_numpy().shape == (8, 16, n_tokens)
    assert all(token.tag for token in result.tokens)

    single = client.attention(TEXT, 2, 3)
    np.testing.assert_allclose(result.pattern(2, 3), single.to_numpy(), atol=1e-6)
    with pytest.raises(KeyError, match="L4H4 was not requested"):
        result.pattern(4, 4)

    frame = result.to_pandas(layout="wide")
    assert len([c for c in frame.columns if c.startswith("L")]) == 128
    np.testing.assert_allclose(frame["L7H2"].to_numpy(), result.to_numpy()[7, 2])

    from headscope.schemas import HeadRef

    again = client.analyze(TEXT, patterns=[HeadRef(layer=0, head=1)])
    np.testing.assert_allclose(again.pattern(0, 1), result.pattern(0, 1))
    assert client.analyze(TEXT).patterns == []
