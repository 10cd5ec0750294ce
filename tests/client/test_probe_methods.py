"""The probe methods against a real server with a small probe run loaded (trained once per
session by the root conftest), checked against the loaded run itself."""

from __future__ import annotations

import numpy as np
import pytest

from headscope_client import (
    AsyncClient,
    HeadRankResult,
    ProbePrediction,
    ProbeRunInfo,
    ProbeScoresResult,
    UnprocessableEntityError,
)

TEXT = 'The little dog barked. "Stop!" said Tim, and he laughed.'


def test_probes_describes_the_loaded_run(probes_client, probes_runtime):
    info = probes_client.probes()
    assert isinstance(info, ProbeRunInfo)
    run = probes_runtime.probes
    assert info.run_id == run.run_id
    assert info.model_fingerprint == probes_client.model().weights_sha256
    assert info.tags == list(run.tags) and "NN" in info.tags
    assert {summary.vector for summary in info.summary} == set(info.vectors)


@pytest.mark.parametrize(("tag", "metric"), [("NN", None), ("DT", "recall"), ("macro", "f1")])
def test_probe_scores_grid_equals_the_stored_run(probes_client, probes_runtime, tag, metric):
    result = probes_client.probe_scores("key", tag, metric=metric)
    assert isinstance(result, ProbeScoresResult)
    assert (result.vector, result.tag, result.metric) == ("key", tag, metric or "f1")
    grid = result.to_numpy()  # [layer, head]
    assert grid.shape == (8, 16)
    expected, support = probes_runtime.probes.scores("key", tag, metric or "f1")
    np.testing.assert_allclose(grid, np.asarray(expected, dtype=np.float64), atol=1e-6)
    assert result.support == support


def test_probe_predict_gives_one_prediction_per_token(probes_client, probes_runtime):
    result = probes_client.probe_predict(TEXT, "key", 0, 3, top_k=2)
    assert isinstance(result, ProbePrediction)
    assert (result.vector, result.layer, result.head) == ("key", 0, 3)
    assert len(result.predictions) == len(result.tokens) == len(probes_client.tag(TEXT).tokens)
    tags = set(probes_runtime.probes.tags)
    for prediction in result.predictions:
        assert len(prediction.top) == 2 and prediction.tag in tags
        assert prediction.top[0].tag == prediction.tag
        assert 0 < prediction.top[1].probability <= prediction.probability <= 1

    frame = result.to_pandas()
    assert list(frame.columns[-3:]) == ["predicted", "probability", "correct"]
    assert frame["correct"].mean() == pytest.approx(result.accuracy)
    assert [token.tag for token in result.tokens] == list(frame["tag"])

    default_top = probes_client.probe_predict(TEXT, "value", 7, 15)
    assert all(len(prediction.top) == 3 for prediction in default_top.predictions)
    with pytest.raises(UnprocessableEntityError):
        probes_client.probe_predict(TEXT, "key", 99, 0)


def test_rank_heads_ranks_all_heads(probes_client):
    result = probes_client.rank_heads("NN", vector="key", position="before", n_sequences=4)
    assert isinstance(result, HeadRankResult)
    frame = result.to_pandas()
    best = result.heads[0]
    assert len(frame) == 128 and frame.index[0] == f"L{best.layer}H{best.head}"
    assert list(frame["combined_rank"]) == sorted(frame["combined_rank"])
    top3 = probes_client.rank_heads("NN", n_sequences=4, limit=3)
    assert len(top3.by_probe) == len(top3.by_lift) == 3


async def test_async_probe_methods_equal_the_sync_ones(probes_server, probes_client):
    async with AsyncClient(probes_server) as client:
        assert await client.probes() == probes_client.probes()
        assert await client.probe_scores("query", "VB") == probes_client.probe_scores("query", "VB")
        predicted = await client.probe_predict(TEXT, "query", 2, 0, top_k=1)
        assert predicted == probes_client.probe_predict(TEXT, "query", 2, 0, top_k=1)
        ranked = await client.rank_heads("DT", n_sequences=4, limit=5)
        assert ranked == probes_client.rank_heads("DT", n_sequences=4, limit=5)
