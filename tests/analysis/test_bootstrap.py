"""Bootstrap intervals over sequences: the resampler against a plain loop, and the corpus
endpoints' `ci` and `warning` fields against intervals rebuilt from per-text analyses."""

from __future__ import annotations

import numpy as np
import pytest

from tests.analysis.test_corpus_api import QUOTED, TEXTS

STORIES = [
    "Tom walked to the park. He saw a big dog and laughed. The dog ran to him.",
    "Lily had a red ball. She threw the ball to her mom, and her mom caught it.",
    "The cat jumped on the bed. It was soft. The cat slept there all day.",
    "Ben found a stick. He waved it and laughed. Then he gave it to his sister.",
    "Mia baked a cake with her dad. They ate it in the garden and smiled.",
    "A bird sang in the tree. The children listened and clapped their hands.",
]


def test_resampled_sums_equal_a_loop_over_the_drawn_sequences():
    from headscope.analysis.bootstrap import Resampler

    values = np.random.default_rng(1).normal(size=(7, 3, 2))  # [sequence, layer, head]
    resampler = Resampler.of(7, seed=5, resamples=50)
    sums = resampler.sums(values)
    assert resampler.counts.sum(axis=1).tolist() == [7.0] * 50  # each draw takes 7 sequences
    for draw in range(50):
        expected = np.zeros((3, 2))
        for sequence, times in enumerate(resampler.counts[draw].astype(int)):
            expected += times * values[sequence]
        np.testing.assert_allclose(sums[draw], expected, rtol=1e-12)
    # Same seed, same draws; another seed, other draws.
    assert np.array_equal(Resampler.of(7, seed=5, resamples=50).counts, resampler.counts)
    assert not np.array_equal(Resampler.of(7, seed=6, resamples=50).counts, resampler.counts)


def test_interval_of_identical_sequences_has_no_width_and_undefined_stays_null():
    from headscope.analysis.bootstrap import Resampler

    resampler = Resampler.of(5, seed=0)
    sums, counts = np.full((5, 2), 3.0), np.full(5, 2.0)
    low, high = resampler.interval(lambda s, n: s / n[:, None], sums, counts)
    np.testing.assert_allclose(low, 1.5)
    np.testing.assert_allclose(high, 1.5)
    # A tag in no sequence: undefined in every resample, so no interval.
    absent = np.zeros(5)
    low, high = resampler.interval(lambda s, n: s / n, absent, absent)
    assert np.isnan(low) and np.isnan(high)
    # In one sequence of five: every resample that has it agrees, so the interval has no width
    # and says nothing; that is what the responses' small-support `warning` is for.
    from headscope.analysis.bootstrap import support_warning

    rare = np.zeros(5)
    rare[0] = 2.0
    low, high = resampler.interval(lambda s, n: s / n, rare, rare)
    assert low == high == 1.0
    assert "small support" in support_warning(tokens=2, sequences=1, what="it")
    assert support_warning(tokens=200, sequences=30, what="it") is None


def test_activity_by_tag_interval_is_rebuilt_from_per_text_activity(corpus_api, runtime):
    """The endpoint's interval for one head, recomputed from each text's activity (POST
    /v1/activity) and tags (POST /v1/tag) with the same resamples."""
    from headscope.analysis.bootstrap import Resampler

    body = corpus_api.post(
        "/v1/corpus/activity-by-tag", json={"texts": STORIES, "tag": "VBD", "seed": 3}
    ).json()
    ci = body["ci"]
    assert ci["level"] == 0.95 and ci["resamples"] == 1000 and "sequences" in ci["method"]
    layer, head = 6, 4
    at_sums, at_counts, all_sums, counts = [], [], [], []
    for text in STORIES:
        tags = [t["tag"] for t in corpus_api.post("/v1/tag", json={"text": text}).json()["tokens"]]
        activity = np.asarray(
            corpus_api.post(
                "/v1/activity", json={"text": text, "layers": [layer], "heads": [head]}
            ).json()["activity"][0][0],
            dtype=np.float64,
        )
        mask = np.array([tag == "VBD" for tag in tags])
        at_sums.append(activity[mask].sum())
        at_counts.append(mask.sum())
        all_sums.append(activity.sum())
        counts.append(len(activity))
    resampler = Resampler.of(len(STORIES), seed=3)
    at = resampler.sums(np.array(at_sums)) / resampler.sums(np.array(at_counts, dtype=float))
    overall = resampler.sums(np.array(all_sums)) / resampler.sums(np.array(counts, dtype=float))
    expected_mean = np.quantile(at, [0.025, 0.975])
    expected_lift = np.quantile(at / overall, [0.025, 0.975])
    got_mean = ci["mean_at_position"]
    got_lift = ci["lift"]
    np.testing.assert_allclose(
        [got_mean["low"][layer][head], got_mean["high"][layer][head]], expected_mean, rtol=1e-5
    )
    np.testing.assert_allclose(
        [got_lift["low"][layer][head], got_lift["high"][layer][head]], expected_lift, rtol=1e-5
    )
    # The point estimates lie inside their intervals for (nearly) every head.
    lift, low, high = (
        np.asarray(x, dtype=float) for x in (body["lift"], got_lift["low"], got_lift["high"])
    )
    assert np.mean((low <= lift + 1e-12) & (lift <= high + 1e-12)) > 0.9
    assert body["positions"] == 18 and "18 token(s) from 6 sequence(s)" in body["warning"]


def test_small_support_is_flagged_and_absent_statistics_have_no_interval(corpus_api):
    one = corpus_api.post(
        "/v1/corpus/activity-by-tag", json={"texts": TEXTS[:1], "tag": "VBD"}
    ).json()
    assert one["positions"] < 20 and "small support" in one["warning"]
    none = corpus_api.post(
        "/v1/corpus/activity-by-tag", json={"texts": ["The cat is on the bed."], "tag": "VBD"}
    ).json()
    assert none["lift"] is None and none["ci"] is None and "small support" in none["warning"]

    enough = corpus_api.post(
        "/v1/corpus/activity-by-tag", json={"texts": STORIES * 2, "tag": "VBD"}
    ).json()
    assert enough["positions"] == 36 and enough["warning"] is None

    quotes = corpus_api.post("/v1/corpus/quotes", json={"texts": [QUOTED]}).json()
    assert "small support" in quotes["warning"]  # one sequence
    assert set(quotes["ci"]) >= {"mean_inside", "mean_outside", "ratio", "attention_to_opening"}


@pytest.mark.parametrize("direction", ["from_tag", "to_tag"])
def test_attention_by_tag_rows_have_intervals(corpus_api, direction):
    body = corpus_api.post(
        "/v1/corpus/attention-by-tag",
        json={"texts": STORIES, "layer": 5, "head": 5, direction: "NN"},
    ).json()
    bounds = body["ci"]["attention"]
    assert {row["tag"] for row in body["rows"]} == set(bounds)
    inside = [
        bounds[row["tag"]]["low"] - 1e-9 <= row["attention"] <= bounds[row["tag"]]["high"] + 1e-9
        for row in body["rows"]
        if bounds[row["tag"]]["low"] is not None
    ]
    assert inside and np.mean(inside) > 0.8
