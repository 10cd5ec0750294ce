"""GET /v1/heads/rank: probe scores, activity lift and their combination.

Most tests use a small object with ProbeRun's interface (`scores`, `tags`, `vectors`, `run_id`)
and scores chosen by the test, so every rank can be worked out by hand; the lifts come from the
real activity-by-tag analysis of the stand-in model. The last one uses the session's trained
probe run (tests/conftest.py `probes_runtime`) and checks the scores against GET /v1/probes/scores.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.analysis.test_corpus_api import assert_error

DRAW = {"n_sequences": 8, "seed": 5}


class ProbeRunStandIn:
    run_id = "test-probe-run"
    tags = ["NN", "VBD"]
    vectors = ["key", "query", "value"]

    def __init__(self, scores: np.ndarray) -> None:
        self._scores = scores
        self.calls: list[tuple[str, str, str]] = []

    def scores(self, vector: str, tag: str, metric: str):
        self.calls.append((vector, tag, metric))
        return self._scores.copy(), 37


@pytest.fixture()
def probe_scores():
    scores = np.random.default_rng(0).permutation(128).reshape(8, 16) / 128.0
    scores[2, 3] = np.nan  # an undefined score ranks last
    return scores


@pytest.fixture()
def rank_api(corpus_settings, runtime_view, probe_scores):
    from fastapi.testclient import TestClient

    from headscope.app import create_app

    runtime_view.probes = ProbeRunStandIn(probe_scores)
    with TestClient(create_app(corpus_settings, runtime=runtime_view)) as client:
        yield client


def competition_ranks(values: np.ndarray) -> np.ndarray:
    filled = np.where(np.isnan(values), -np.inf, values)
    return np.array([1 + int((filled > value).sum()) for value in filled])


def test_rank_combines_probe_scores_and_activity_lift(rank_api, probe_scores):
    response = rank_api.get(
        "/v1/heads/rank", params={"tag": "VBD", "vector": "query", "position": "before", **DRAW}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert rank_api.app.state.runtime.probes.calls == [("query", "VBD", "f1")]
    assert body["probe_run"] == "test-probe-run" and body["probe_support"] == 37
    assert body["combination"].startswith("combined_score")

    activity = rank_api.post(
        "/v1/corpus/activity-by-tag", json={"tag": "VBD", "position": "before", **DRAW}
    ).json()
    lift = np.array(activity["lift"]).ravel()
    probe = probe_scores.ravel()
    probe_rank, lift_rank = competition_ranks(probe), competition_ranks(lift)
    combined = (2 - (probe_rank - 1) / 127 - (lift_rank - 1) / 127) / 2

    heads = body["heads"]
    assert len(heads) == 128
    assert [h["combined_rank"] for h in heads] == list(range(1, 129))
    scores_in_order = [h["combined_score"] for h in heads]
    assert scores_in_order == sorted(scores_in_order, reverse=True)
    for entry in heads:
        i = entry["layer"] * 16 + entry["head"]
        assert entry["probe_rank"] == probe_rank[i] and entry["lift_rank"] == lift_rank[i]
        assert entry["lift"] == pytest.approx(lift[i], rel=1e-9)
        assert entry["combined_score"] == pytest.approx(combined[i], abs=1e-12)
        if np.isnan(probe[i]):
            assert entry["probe_score"] is None and entry["probe_rank"] == 128
        else:
            assert entry["probe_score"] == pytest.approx(probe[i])
    best_probe = int(np.nanargmax(probe))
    assert body["by_probe"][0] == {"layer": best_probe // 16, "head": best_probe % 16}
    by_lift = [h["layer"] * 16 + h["head"] for h in body["by_lift"]]
    assert [lift[i] for i in by_lift] == sorted(lift, reverse=True)
    assert body["source"] == activity["source"]


def test_rank_limit_and_bad_input(rank_api):
    body = rank_api.get("/v1/heads/rank", params={"tag": "NN", "limit": 5, **DRAW}).json()
    assert len(body["heads"]) == len(body["by_probe"]) == len(body["by_lift"]) == 5
    assert body["vector"] == "key" and body["metric"] == "f1" and body["position"] == "on"
    for params, code in [
        ({"tag": "NN", "vector": "residual"}, "invalid_request"),
        ({"tag": "JJ"}, "invalid_request"),  # not probed
        ({"tag": "NN", "metric": "accuracy"}, "invalid_request"),
        ({"tag": "NN", "position": "inside"}, "invalid_request"),
        ({"tag": "NN", "n_sequences": 500}, "invalid_request"),  # over the cap
        ({"tag": "NN", "bogus": "1"}, "invalid_request"),
    ]:
        assert_error(rank_api.get("/v1/heads/rank", params=params), 422, code)


def test_rank_without_probes_is_503_with_the_reason(corpus_settings, runtime_view):
    from fastapi.testclient import TestClient

    from headscope.app import create_app

    runtime_view.probes = None
    runtime_view.probes_reason = "No probe run for this model in models_store; train one."
    with TestClient(create_app(corpus_settings, runtime=runtime_view)) as client:
        error = assert_error(
            client.get("/v1/heads/rank", params={"tag": "VBD"}), 503, "probes_not_loaded"
        )
    assert error["message"] == runtime_view.probes_reason


def test_rank_with_the_session_probe_run_reports_its_scores(corpus_settings, probes_runtime):
    from fastapi.testclient import TestClient

    from headscope.app import create_app

    tag = next(t for t in ("NN", "DT", "VBD") if t in probes_runtime.probes.tags)
    with TestClient(create_app(corpus_settings, runtime=probes_runtime)) as client:
        params = {"tag": tag, "vector": "key", "metric": "f1"}
        ranked = client.get("/v1/heads/rank", params={**params, **DRAW})
        assert ranked.status_code == 200, ranked.text
        scores = client.get("/v1/probes/scores", params=params).json()
    body = ranked.json()
    assert body["probe_run"] == probes_runtime.probes.run_id
    assert body["probe_support"] == scores["support"]
    grid = np.array(scores["scores"])
    for entry in body["heads"]:
        assert entry["probe_score"] == pytest.approx(grid[entry["layer"], entry["head"]])
    best = body["by_probe"][0]
    assert grid[best["layer"], best["head"]] == grid.max()
