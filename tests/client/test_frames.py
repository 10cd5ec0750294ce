"""Tidy pandas frames of the results, against the arrays they come from: long activity and
pattern frames, probe scores, corpus statistics per head, and the confidence intervals and
warnings a server may add to corpus results (served here, by a real scripted server, as the
real server's answer plus those fields)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from headscope_client import Client

TEXT = 'Tom found a red ball. "Look!" he said to Sue, and she laughed.'
TEXTS = [
    'Ben said, "I found a shell!" He ran to show his mom.',
    "The cat jumped on the bed. It purred and slept.",
]


def test_activity_long_frame_holds_every_number_once(client):
    result = client.activity(TEXT, layers=[2, 7], heads=[4, 0, 11], format="safetensors")
    array = result.to_numpy()  # [layer, head, token]
    frame = result.to_pandas()
    assert list(frame.columns) == ["layer", "head", "token", "text", "tag", "activity"]
    assert len(frame) == array.size
    cube = frame.set_index(["layer", "head", "token"])["activity"].sort_index()
    for i, layer in enumerate(result.layers):
        for j, head in enumerate(result.heads):
            np.testing.assert_array_equal(cube.loc[layer, head].to_numpy(), array[i, j])
    first = frame[(frame["layer"] == 7) & (frame["head"] == 11)]
    assert list(first["text"]) == [token.text for token in result.tokens]


def test_analyze_long_frame_carries_the_tags_and_patterns_frame_the_weights(client):
    result = client.analyze(TEXT, patterns=[(1, 2), (6, 6)], format="safetensors")
    frame = result.to_pandas()
    n_tokens = len(result.tokens)
    assert len(frame) == 128 * n_tokens
    tags = [token.tag for token in result.tokens]
    assert list(frame[(frame["layer"] == 3) & (frame["head"] == 9)]["tag"]) == tags
    activity = result.to_numpy()
    np.testing.assert_array_equal(
        frame.set_index(["layer", "head", "token"])["activity"].to_numpy(), activity.reshape(-1)
    )

    patterns = result.patterns_to_pandas()
    assert list(patterns.columns) == [
        "layer", "head", "query", "key", "query_text", "key_text", "weight"
    ]  # fmt: skip
    assert len(patterns) == 2 * n_tokens * n_tokens
    six = patterns[(patterns["layer"] == 6) & (patterns["head"] == 6)]
    pivot = six.pivot(index="query", columns="key", values="weight").to_numpy()
    np.testing.assert_array_equal(pivot, result.pattern(6, 6))
    assert client.analyze(TEXT).patterns_to_pandas().empty


def test_attention_frame_one_row_per_query_and_key(client):
    result = client.attention(TEXT, 4, 1, query=6, dtype="float16")
    frame = result.to_pandas()
    assert set(frame["query"]) == {6} and list(frame["key"]) == list(range(len(result.tokens)))
    assert frame["query_text"].iloc[0] == result.tokens[6].text
    # float16 numbers arrive as float16 and sit in the frame as float32 (pandas has no float16).
    assert frame["weight"].dtype == np.float32
    np.testing.assert_array_equal(frame["weight"].to_numpy(), result.to_numpy()[0])
    assert frame["weight"].sum() == pytest.approx(1.0, abs=1e-2)


def test_probe_scores_frame_is_long(probes_client):
    result = probes_client.probe_scores("key", "NN", metric="recall")
    frame = result.to_pandas()
    assert list(frame.columns) == ["layer", "head", "vector", "tag", "metric", "value", "support"]
    assert len(frame) == 128
    assert set(frame["vector"]) == {"key"} and set(frame["metric"]) == {"recall"}
    assert set(frame["support"]) == {result.support}
    grid = frame.pivot(index="layer", columns="head", values="value").to_numpy()
    np.testing.assert_array_equal(grid, result.to_numpy())
    macro = probes_client.probe_scores("key", "macro").to_pandas()
    assert macro["support"].isna().all()


@pytest.fixture()
def corpus_client(corpus_server, monkeypatch):
    monkeypatch.delenv("HEADSCOPE_API_KEY", raising=False)
    with Client(corpus_server) as client:
        yield client


def test_corpus_statistics_frames_have_one_row_per_head(corpus_client):
    by_tag = corpus_client.activity_by_tag("NN", position="after", texts=TEXTS)
    frame = by_tag.to_pandas()
    columns = ["layer", "head", "mean_at_position", "mean_overall", "lift"]
    assert list(frame.columns)[:5] == columns
    # then the server's bootstrap intervals, two columns each
    assert all(column.endswith(("_ci_low", "_ci_high")) for column in list(frame.columns)[5:])
    assert len(frame) == 128
    for name in ("mean_at_position", "mean_overall", "lift"):
        grid = frame.pivot(index="layer", columns="head", values=name).to_numpy()
        np.testing.assert_array_equal(grid, by_tag.to_numpy(name))

    quotes = corpus_client.quotes(texts=TEXTS).to_pandas()
    assert list(quotes.columns)[:6] == [
        "layer", "head", "mean_inside", "mean_outside", "ratio", "attention_to_opening"
    ]  # fmt: skip
    assert all(column.endswith(("_ci_low", "_ci_high")) for column in list(quotes.columns)[6:])
    assert quotes["ratio"].notna().all()
    none = corpus_client.quotes(texts=[TEXTS[1]])
    nothing_inside = none.to_pandas()
    assert none.ratio is None and nothing_inside["ratio"].isna().all()
    assert nothing_inside["mean_outside"].notna().all()


def lift_intervals(lift: list[list[float]]) -> list[list[list[float]]]:
    return [[[value * 0.9, value * 1.1] for value in row] for row in lift]


def test_intervals_and_warnings_are_kept_when_the_server_gives_them(corpus_server, scripted):
    from tests.client.conftest import Step

    def served(path: str, body: dict) -> dict:
        response = httpx.post(corpus_server + path, json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    by_tag = served("/v1/corpus/activity-by-tag", {"tag": "NN", "texts": TEXTS})
    assert by_tag["ci"] is not None  # the server's own bootstrap intervals
    # Fields the server may add later are kept too.
    by_tag |= {"support": [[7] * 16 for _ in range(8)], "warning": "only 2 sequences"}
    attention = served(
        "/v1/corpus/attention-by-tag", {"layer": 1, "head": 1, "from_tag": "NN", "texts": TEXTS}
    )
    for row in attention["rows"]:
        row["attention_ci"] = {"low": row["attention"] / 2, "high": row["attention"]}
    scripted.reset(
        {
            "/v1/corpus/activity-by-tag": [Step(body=by_tag)],
            "/v1/corpus/attention-by-tag": [Step(body=attention)],
        }
    )
    with Client(scripted.base_url) as client:
        result = client.activity_by_tag("NN", texts=TEXTS)
        rows = client.attention_by_tag(1, 1, from_tag="NN", texts=TEXTS).to_pandas()
    assert result.model_dump()["warning"] == by_tag["warning"]

    frame = result.to_pandas()  # one row per (layer, head), in layer-major order
    assert {"lift_ci_low", "lift_ci_high", "support"} <= set(frame.columns)
    assert {"mean_at_position_ci_low", "mean_at_position_ci_high"} <= set(frame.columns)

    def flat(grid) -> np.ndarray:
        return np.array([[np.nan if v is None else v for v in row] for row in grid]).ravel()

    for stat in ("lift", "mean_at_position"):
        np.testing.assert_array_equal(frame[f"{stat}_ci_low"], flat(by_tag["ci"][stat]["low"]))
        np.testing.assert_array_equal(frame[f"{stat}_ci_high"], flat(by_tag["ci"][stat]["high"]))
    assert set(frame["support"]) == {7}
    assert frame.attrs["warning"] == "only 2 sequences"

    np.testing.assert_allclose(rows["attention_ci_low"], rows["attention"] / 2)
    np.testing.assert_allclose(rows["attention_ci_high"], rows["attention"])
