"""The corpus and figure methods against a real server whose corpus is the TinyStories sample,
checked against the core methods on the same texts."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from headscope_client import (
    ActivityByTagResult,
    AsyncClient,
    AttentionByTagResult,
    Client,
    HeadRankResult,
    QuotesResult,
    UnavailableError,
)
from tests.client.conftest import CountingTransport

TEXTS = [
    'Ben said, "I found a shell!" He ran to show his mom.',
    "The cat jumped on the bed. It purred and slept.",
    'Sue looked at the sky. "It will rain," she said. They went home.',
]


@pytest.fixture()
def corpus_client(corpus_server, monkeypatch):
    monkeypatch.delenv("HEADSCOPE_API_KEY", raising=False)
    with Client(corpus_server) as client:
        yield client


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_quotes_matches_the_core_methods(corpus_client):
    result = corpus_client.quotes(texts=TEXTS)
    assert isinstance(result, QuotesResult)
    assert result.source.kind == "texts" and result.source.sequences == 3
    assert [span.sequence for span in result.spans] == [0, 2]
    for span in result.spans:
        assert TEXTS[span.sequence][span.start] == '"'

    spans = result.spans_to_pandas()
    assert list(spans["sequence"]) == [0, 2] and "inside_tokens" in spans.columns
    ratio = result.to_numpy()  # [layer, head]
    assert ratio.shape == (8, 16)
    np.testing.assert_allclose(
        ratio, result.to_numpy("mean_inside") / result.to_numpy("mean_outside"), rtol=1e-5
    )

    # mean_inside again from /v1/activity: the tokens strictly between the quote-mark tokens.
    inside = []
    for span in result.spans:
        activity = corpus_client.activity(TEXTS[span.sequence]).to_numpy()  # [layer, head, token]
        stop = span.closing_token if span.closing_token is not None else activity.shape[2]
        inside.append(activity[:, :, span.opening_token + 1 : stop])
    direct = np.concatenate(inside, axis=2).mean(axis=2)
    np.testing.assert_allclose(result.to_numpy("mean_inside"), direct, atol=1e-5)
    with pytest.raises(ValueError, match="no grid named"):
        result.to_numpy("lift")


def test_quotes_from_the_server_corpus_is_seeded(corpus_client):
    first = corpus_client.quotes(n_sequences=3, seed=7)
    again = corpus_client.quotes(n_sequences=3, seed=7)
    assert first.source.kind == "corpus" and len(first.source.indices) == 3
    assert first == again


def test_activity_by_tag_lift_is_the_ratio_of_its_means(corpus_client):
    result = corpus_client.activity_by_tag("VBD", position="before", texts=TEXTS)
    assert isinstance(result, ActivityByTagResult)
    assert (result.tag, result.position) == ("VBD", "before")
    lift = result.to_numpy()  # [layer, head]
    assert lift.shape == (8, 16)
    np.testing.assert_allclose(
        lift, result.to_numpy("mean_at_position") / result.to_numpy("mean_overall"), rtol=1e-5
    )

    overall = np.concatenate(
        [corpus_client.activity(text).to_numpy() for text in TEXTS], axis=2
    ).mean(axis=2)
    np.testing.assert_allclose(result.to_numpy("mean_overall"), overall, atol=1e-5)

    nowhere = corpus_client.activity_by_tag("UH", texts=TEXTS[1:2])
    assert nowhere.positions == 0
    with pytest.raises(ValueError, match="lift is null"):
        nowhere.to_numpy()


def test_attention_by_tag_rows_sum_to_one(corpus_client):
    result = corpus_client.attention_by_tag(2, 0, from_tag="NN", texts=TEXTS)
    assert isinstance(result, AttentionByTagResult)
    assert (result.layer, result.head, result.direction, result.tag) == (2, 0, "from", "NN")
    table = result.to_pandas()
    assert table.index.name == "tag"
    assert table["attention"].sum() == pytest.approx(1.0, abs=1e-5)
    assert result.attention_to("NN") == pytest.approx(table.loc["NN", "attention"])
    assert result.attention_to("no-such-tag") == 0.0

    to_tag = corpus_client.attention_by_tag(2, 0, to_tag="NN", texts=TEXTS)
    assert to_tag.direction == "to"


def test_rank_heads_without_probes_is_retried_then_unavailable(corpus_server, monkeypatch):
    monkeypatch.delenv("HEADSCOPE_API_KEY", raising=False)
    transport = CountingTransport()
    client = Client(corpus_server, max_retries=2, transport=transport)
    with client, pytest.raises(UnavailableError) as caught:
        client.rank_heads("VBD", n_sequences=2)
    assert caught.value.code == "probes_not_loaded"
    assert len(transport.requests) == 3  # the first try and max_retries=2 retries


def test_figures_are_pngs_of_the_asked_width(corpus_client):
    text = TEXTS[0]
    assert png_size(corpus_client.activity_figure(text, 2, 0, width=640))[0] == 640
    assert png_size(corpus_client.attention_figure(text, 2, 0, query=5, width=500))[0] == 500
    by_tag = corpus_client.attention_by_tag_figure(2, 0, from_tag="NN", texts=TEXTS, width=700)
    assert png_size(by_tag) == (700, 500)
    activity_by_tag = corpus_client.activity_by_tag_figure(
        "VBD", position="before", texts=TEXTS, layer=6, width=800, height=400
    )
    assert png_size(activity_by_tag) == (800, 400)
    assert png_size(corpus_client.quotes_figure(texts=TEXTS, top=4, width=600))[0] == 600


async def test_async_corpus_and_figure_methods_equal_the_sync_ones(corpus_server, corpus_client):
    sync = corpus_client
    async with AsyncClient(corpus_server) as client:
        assert await client.quotes(texts=TEXTS) == sync.quotes(texts=TEXTS)
        by_tag = await client.activity_by_tag("NN", texts=TEXTS)
        assert by_tag == sync.activity_by_tag("NN", texts=TEXTS)
        to_dt = await client.attention_by_tag(1, 3, to_tag="DT", texts=TEXTS)
        assert to_dt == sync.attention_by_tag(1, 3, to_tag="DT", texts=TEXTS)

        figures = [
            await client.activity_figure(TEXTS[1], 0, 0, width=400),
            await client.attention_figure(TEXTS[1], 0, 0, width=400),
            await client.attention_by_tag_figure(0, 0, from_tag="DT", texts=TEXTS, width=400),
            await client.activity_by_tag_figure("NN", texts=TEXTS, layer=0, width=400),
            await client.quotes_figure(texts=TEXTS, width=400),
        ]
        assert [png_size(figure)[0] for figure in figures] == [400] * 5
    async with AsyncClient(corpus_server, max_retries=0) as client:
        with pytest.raises(UnavailableError):
            await client.rank_heads("VBD")


def test_texts_must_be_a_list(corpus_client):
    with pytest.raises(TypeError, match="list of texts"):
        corpus_client.quotes(texts="one text")
    assert HeadRankResult.model_fields.keys() >= {"heads", "by_probe", "by_lift"}
