"""A job's merged sums answer the corpus questions with the endpoints' numbers (the endpoint
analyses the same sequences in one request), whatever order the shards are added in."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.jobs.conftest import JOB_SEQUENCES, SHARD_SEQUENCES

RTOL = 1e-9


def assert_grids_equal(ours, theirs):
    assert (ours is None) == (theirs is None)
    if ours is not None:
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=RTOL, atol=0)


@pytest.fixture(scope="module")
def results(finished_job):
    from headscope.jobs.results import JobResults

    _, out = finished_job
    return JobResults(out)


def test_job_covers_the_corpus_in_shards(finished_job, endpoint_analysis):
    job, out = finished_job
    assert job["status"] == "finished"
    assert job["sequences"] == JOB_SEQUENCES
    assert job["shards"] == -(-JOB_SEQUENCES // SHARD_SEQUENCES)
    corpus = endpoint_analysis.corpus()
    assert job["corpus_sha256"] == corpus.sha256
    encoded = [endpoint_analysis._encode_truncated(text)[0] for text in corpus.sequences]
    assert job["tokens"] == sum(len(e) for e in encoded)


@pytest.mark.parametrize("position", ["on", "before", "after"])
@pytest.mark.parametrize("tag", ["NN", "VBD", "PRP$", "``"])
def test_activity_by_tag_equals_the_endpoint(
    results, finished_job, endpoint_analysis, tag, position
):
    from headscope.schemas import ActivityByTagRequest, CorpusJobActivityQuery

    job, _ = finished_job
    ours = results.activity_by_tag(job["id"], CorpusJobActivityQuery(tag=tag, position=position))
    theirs = endpoint_analysis.activity_by_tag(
        ActivityByTagRequest(tag=tag, position=position, n_sequences=JOB_SEQUENCES)
    )
    assert ours.positions == theirs.positions > 0
    assert ours.tag_tokens == theirs.tag_tokens
    assert ours.tokens == theirs.tokens
    assert_grids_equal(ours.mean_overall, theirs.mean_overall)
    assert_grids_equal(ours.mean_at_position, theirs.mean_at_position)
    assert_grids_equal(ours.lift, theirs.lift)
    assert ours.warning == theirs.warning
    assert ours.source.kind == "job" and ours.source.job == job["id"]


@pytest.mark.parametrize(
    ("layer", "head", "direction", "tag"),
    [(5, 5, "from", "PRP$"), (2, 0, "to", "``"), (6, 4, "from", "VBD"), (1, 7, "to", "NN")],
)
def test_attention_by_tag_equals_the_endpoint(
    results, finished_job, endpoint_analysis, layer, head, direction, tag
):
    from headscope.schemas import AttentionByTagRequest, CorpusJobAttentionQuery

    job, _ = finished_job
    fields = {"layer": layer, "head": head, f"{direction}_tag": tag}
    ours = results.attention_by_tag(job["id"], CorpusJobAttentionQuery(**fields))
    theirs = endpoint_analysis.attention_by_tag(
        AttentionByTagRequest(**fields, n_sequences=JOB_SEQUENCES)
    )
    assert ours.tag_tokens == theirs.tag_tokens > 0
    assert [row.tag for row in ours.rows] == [row.tag for row in theirs.rows]
    for mine, other in zip(ours.rows, theirs.rows, strict=True):
        assert mine.query_tokens == other.query_tokens
        assert mine.attention == pytest.approx(other.attention, rel=RTOL, abs=0)
        assert mine.frequency == pytest.approx(other.frequency, rel=RTOL, abs=0)
    assert ours.warning == theirs.warning


def test_quotes_equal_the_endpoint(results, finished_job, endpoint_analysis):
    from headscope.schemas import CorpusJobQuotesQuery, QuotesRequest

    job, _ = finished_job
    ours = results.quotes(job["id"], CorpusJobQuotesQuery())
    theirs = endpoint_analysis.quotes(QuotesRequest(n_sequences=JOB_SEQUENCES))
    assert ours.inside_tokens == theirs.inside_tokens > 0
    assert ours.outside_tokens == theirs.outside_tokens
    for name in ("mean_inside", "mean_outside", "ratio", "attention_to_opening"):
        assert_grids_equal(getattr(ours, name), getattr(theirs, name))
    assert ours.warning == theirs.warning


def test_the_reduce_does_not_depend_on_shard_order(finished_job):
    from headscope.jobs.run import reduce_shards

    job, out = finished_job
    in_order, totals = reduce_shards(out)
    assert totals["shards"] == job["shards"] > 2
    for seed in range(3):
        order = list(range(job["shards"]))
        random.Random(seed).shuffle(order)
        shuffled, _ = reduce_shards(out, order=order)
        assert shuffled.keys() == in_order.keys()
        for name, array in in_order.items():
            np.testing.assert_allclose(shuffled[name], array, rtol=1e-12, atol=0, err_msg=name)


def test_probe_features_are_every_token_in_corpus_order(finished_job, runtime, job_corpus):
    """A shard's float16 features are the engine's float32 vectors, rounded, token by token."""
    from safetensors.numpy import load_file

    from headscope.jobs.run import shard_paths
    from headscope.jobs.source import CorpusFile

    job, out = finished_job
    _, features_path = shard_paths(out, 1)
    features = load_file(features_path)
    texts = next(
        shard
        for shard in CorpusFile.open(str(job_corpus)).shards(SHARD_SEQUENCES)
        if shard.index == 1
    ).texts
    ids = [runtime.tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    assert features["token_ids"].tolist() == [i for sequence in ids for i in sequence]
    expected = runtime.runner.forward(ids[2], vectors=True)
    start = sum(len(sequence) for sequence in ids[:2])
    mine = features["key"][:, :, start : start + len(ids[2])]
    assert mine.dtype == np.float16
    np.testing.assert_array_equal(mine, expected.keys.astype(np.float16))
    assert features["sequence"][start] == 2
    vocabulary = job["tags"]
    tags = [vocabulary[i] for i in features["tags"][start : start + len(ids[2])]]
    assert tags == runtime.tagger.tag_tokens(
        texts[2], runtime.tokenizer(texts[2], add_special_tokens=False).offset_mapping, "overlap"
    )


def test_two_local_workers_write_the_same_sums(job_corpus, finished_job, tmp_path):
    """The local engine's joblib processes (each loading the model once) give the one-process
    job's sums exactly."""
    from safetensors.numpy import load_file

    from headscope.jobs.run import STATISTICS_FILE, run_job
    from tests.jobs.conftest import job_spec

    job, out = finished_job
    spec = job_spec(job_corpus, tmp_path / "two", kinds=("activity-by-tag", "quotes"))
    two = run_job(spec, engine="local", workers=2, progress=False)
    assert (two["last_run"]["workers"], two["tokens"]) == (2, job["tokens"])
    ours, theirs = load_file(tmp_path / "two" / STATISTICS_FILE), load_file(out / STATISTICS_FILE)
    for name, array in ours.items():
        np.testing.assert_array_equal(array, theirs[name], err_msg=name)


# -- intervals and quote spans ---------------------------------------------------------------

CI_SEED = 7


def assert_intervals_equal(ours, theirs):
    """Two GridIntervals (or Intervals) equal to RTOL, undefined (None) in the same places;
    the number of defined lower bounds."""
    for bound in ("low", "high"):
        mine, other = (
            np.asarray(getattr(ours, bound), float),
            np.asarray(getattr(theirs, bound), float),
        )
        np.testing.assert_array_equal(np.isnan(mine), np.isnan(other))
        np.testing.assert_allclose(mine, other, rtol=RTOL, atol=0, equal_nan=True)
    return int(np.isfinite(np.asarray(theirs.low, float)).sum())


@pytest.fixture(scope="module")
def sequence_shards(job_corpus, tmp_path_factory):
    """(job id, results, texts in corpus order) of a job with one sequence per shard: its
    bootstrap over shards is the corpus endpoints' bootstrap over sequences."""
    from headscope.jobs.results import JobResults
    from headscope.jobs.run import run_job
    from headscope.jobs.source import CorpusFile
    from tests.jobs.conftest import job_spec

    out = tmp_path_factory.mktemp("jobs") / "sequence-shards"
    kinds = ("activity-by-tag", "attention-by-tag", "quotes")
    job = run_job(job_spec(job_corpus, out, kinds, shard_sequences=1), progress=False)
    texts = list(CorpusFile.open(str(job_corpus)).sequences())
    assert job["shards"] == len(texts) == JOB_SEQUENCES
    return job["id"], JobResults(out), texts


@pytest.mark.parametrize(("tag", "position"), [("NN", "on"), ("VBD", "after"), ("``", "before")])
def test_activity_intervals_equal_the_endpoints(sequence_shards, endpoint_analysis, tag, position):
    from headscope.schemas import ActivityByTagRequest, CorpusJobActivityQuery

    job_id, results, texts = sequence_shards
    ours = results.activity_by_tag(
        job_id, CorpusJobActivityQuery(tag=tag, position=position, seed=CI_SEED)
    )
    theirs = endpoint_analysis.activity_by_tag(
        ActivityByTagRequest(tag=tag, position=position, texts=texts, seed=CI_SEED)
    )
    assert ours.ci is not None and theirs.ci is not None
    assert (ours.ci.level, ours.ci.resamples) == (theirs.ci.level, theirs.ci.resamples)
    assert "over shards" in ours.ci.method
    assert assert_intervals_equal(ours.ci.mean_at_position, theirs.ci.mean_at_position) > 0
    assert_intervals_equal(ours.ci.lift, theirs.ci.lift)


@pytest.mark.parametrize(
    ("layer", "head", "direction", "tag"), [(5, 5, "from", "PRP$"), (2, 0, "to", "``")]
)
def test_attention_intervals_equal_the_endpoints(
    sequence_shards, endpoint_analysis, layer, head, direction, tag
):
    from headscope.schemas import AttentionByTagRequest, CorpusJobAttentionQuery

    job_id, results, texts = sequence_shards
    fields = {"layer": layer, "head": head, f"{direction}_tag": tag, "seed": CI_SEED}
    ours = results.attention_by_tag(job_id, CorpusJobAttentionQuery(**fields))
    theirs = endpoint_analysis.attention_by_tag(AttentionByTagRequest(**fields, texts=texts))
    assert ours.ci is not None and theirs.ci is not None
    assert ours.ci.attention.keys() == theirs.ci.attention.keys()
    defined = sum(
        assert_intervals_equal(ours.ci.attention[tag_of_row], interval)
        for tag_of_row, interval in theirs.ci.attention.items()
    )
    assert defined > 0


def test_quote_intervals_and_spans_equal_the_endpoints(sequence_shards, endpoint_analysis):
    from headscope.schemas import CorpusJobQuotesQuery, QuotesRequest

    job_id, results, texts = sequence_shards
    ours = results.quotes(job_id, CorpusJobQuotesQuery(seed=CI_SEED))
    theirs = endpoint_analysis.quotes(QuotesRequest(texts=texts, seed=CI_SEED))
    assert ours.ci is not None and theirs.ci is not None
    for name in ("mean_inside", "mean_outside", "ratio", "attention_to_opening"):
        assert assert_intervals_equal(getattr(ours.ci, name), getattr(theirs.ci, name)) > 0
    assert len(theirs.spans) > 0
    assert ours.spans == theirs.spans


def test_a_jobs_spans_index_the_corpus_whatever_the_shard_size(
    results, finished_job, sequence_shards
):
    """Spans of 8-sequence shards are those of 1-sequence shards: `sequence` counts from the
    corpus's first sequence, not the shard's."""
    from headscope.schemas import CorpusJobQuotesQuery

    job, _ = finished_job
    job_id, by_sequence, _ = sequence_shards
    ours = results.quotes(job["id"], CorpusJobQuotesQuery())
    assert any(span.sequence >= SHARD_SEQUENCES for span in ours.spans)
    assert ours.spans == by_sequence.quotes(job_id, CorpusJobQuotesQuery()).spans


def test_intervals_over_larger_shards_follow_the_seed(results, finished_job):
    from headscope.schemas import CorpusJobQuotesQuery

    job, _ = finished_job
    first, again, other = (
        results.quotes(job["id"], CorpusJobQuotesQuery(seed=seed)).ci for seed in (0, 0, 1)
    )
    assert first is not None and first == again and first != other
    low, high = (np.asarray(getattr(first.mean_inside, b), float) for b in ("low", "high"))
    assert np.all(low <= high)
