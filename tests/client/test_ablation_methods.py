"""The ablation and head-score methods (sync and async) against a real server whose corpus is
the TinyStories sample, checked against each other and against the server's grid shape."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from headscope_client import (
    AblateResult,
    AsyncClient,
    Client,
    CorpusAblationResult,
    HeadScoresResult,
    UnprocessableEntityError,
)

TEXTS = ['Ben said, "I found a shell!" He ran to show his mom.', "The cat sat. It purred."]


@pytest.fixture()
def corpus_client(corpus_server, monkeypatch):
    monkeypatch.delenv("HEADSCOPE_API_KEY", raising=False)
    with Client(corpus_server) as client:
        yield client


def test_ablate_and_corpus_ablation_agree(corpus_client):
    single = corpus_client.ablate(TEXTS[1], [(2, 0), (6, 4)], mode="zero", top_k=2)
    assert isinstance(single, AblateResult)
    frame = single.to_pandas()
    assert len(frame) == len(single.tokens) - 1
    np.testing.assert_allclose(
        frame["loss_change"], frame["loss_after"] - frame["loss_before"], atol=1e-6
    )
    assert all(len(p.top_after) == 2 for p in single.predictions)

    pooled = corpus_client.corpus_ablation(heads=[(2, 0), (6, 4)], texts=[TEXTS[1]])
    assert isinstance(pooled, CorpusAblationResult)
    rows = {row.tag: row for row in pooled.by_next_tag}
    for row in single.by_next_tag:
        assert rows[row.tag].mean_loss_change == pytest.approx(row.mean_loss_change, abs=1e-6)
    with pytest.raises(ValueError):
        pooled.to_numpy()  # heads ablated together: no grid


def test_grid_and_head_scores_have_the_models_shape(corpus_client):
    shape = (corpus_client.model().n_layers, corpus_client.model().n_heads)
    grid = corpus_client.corpus_ablation(all_heads=True, tag="NN", texts=TEXTS)
    assert grid.to_numpy().shape == shape
    scores = corpus_client.head_scores("previous_token", length=8, n_sequences=2)
    assert isinstance(scores, HeadScoresResult)
    values = scores.to_numpy()
    assert values.shape == shape and np.all((values >= 0) & (values <= 1))


def test_bad_heads_raise_the_422(corpus_client):
    with pytest.raises(UnprocessableEntityError) as caught:
        corpus_client.ablate(TEXTS[0], [(99, 0)])
    assert caught.value.code == "unknown_head"
    with pytest.raises(UnprocessableEntityError):
        corpus_client.ablate(TEXTS[0], [])


def test_async_methods_give_the_same_results(corpus_server, corpus_client, monkeypatch):
    monkeypatch.delenv("HEADSCOPE_API_KEY", raising=False)

    async def run():
        async with AsyncClient(corpus_server) as client:
            return (
                await client.ablate(TEXTS[1], [(2, 0)]),
                await client.head_scores("induction", length=8, n_sequences=2),
                await client.corpus_ablation(heads=[(2, 0)], texts=[TEXTS[1]]),
            )

    ablated, scores, pooled = asyncio.run(run())
    assert ablated == corpus_client.ablate(TEXTS[1], [(2, 0)])
    assert scores == corpus_client.head_scores("induction", length=8, n_sequences=2)
    assert pooled == corpus_client.corpus_ablation(heads=[(2, 0)], texts=[TEXTS[1]])
