"""The `ablation` job kind: its per-tag mean loss changes equal POST /v1/corpus/ablation's on the
same sequences (zero and mean ablation), its merge does not depend on the shard order, and the
server answers from the finished job (GET /v1/corpus/jobs/{id}/ablation)."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest

from tests.helpers import CORPUS, STANDIN_DIR

SEQUENCES = 6
SHARD_SEQUENCES = 2
HEADS = ((0, 3), (2, 0), (5, 5), (7, 1))
TAG = "VBD"
# The endpoint's grid sums each sequence's float32 losses and loss changes in float32 before its
# float64 sum (the job adds every one in float64): the two differ by float32 round-off of those
# per-sequence sums, not by the losses themselves (test_the_losses_are_the_endpoints).
GRID_RTOL = 1e-5


@pytest.fixture(scope="module")
def ablation_corpus(tmp_path_factory):
    """The sample's first short sequences (the all-heads grid stays cheap), as a corpus file."""
    from headscope.jobs.source import CorpusFile

    sequences = []
    for text in CorpusFile.open(str(CORPUS)).sequences():
        if len(text) < 400:
            sequences.append(text)
        if len(sequences) == SEQUENCES:
            break
    path = tmp_path_factory.mktemp("ablation-corpus") / "stories.txt"
    path.write_text("\n\n".join(sequences) + "\n")
    return path


def run_ablation_job(corpus, out, mode, shard_sequences=SHARD_SEQUENCES):
    from headscope.jobs.ablation import AblationJob
    from headscope.jobs.run import JobSpec, WorkerConfig, run_job

    spec = JobSpec(
        corpus=str(corpus),
        kinds=("ablation",),
        out=out,
        worker=WorkerConfig(model=str(STANDIN_DIR)),
        shard_sequences=shard_sequences,
        ablation=AblationJob(mode=mode, heads=HEADS),
    )
    return run_job(spec, progress=False), out


@pytest.fixture(scope="module")
def zero_job(ablation_corpus, tmp_path_factory):
    return run_ablation_job(ablation_corpus, tmp_path_factory.mktemp("jobs") / "zero", "zero")


@pytest.fixture(scope="module")
def mean_job(ablation_corpus, tmp_path_factory):
    return run_ablation_job(ablation_corpus, tmp_path_factory.mktemp("jobs") / "mean", "mean")


@pytest.fixture(scope="module")
def endpoint(runtime, ablation_corpus):
    """The corpus ablation endpoint's analysis, its corpus the same sequences."""
    from headscope.analysis.ablation import AblationAnalysis
    from headscope.analysis.corpus import CorpusAnalysis
    from headscope.settings import Settings

    settings = Settings(
        model=str(STANDIN_DIR),
        corpus=str(ablation_corpus),
        corpus_max_sequences=SEQUENCES,
        corpus_cache_size=0,
    )
    return AblationAnalysis(CorpusAnalysis(runtime, settings))


def job_answer(out, job, **query):
    from headscope.jobs.results import JobResults
    from headscope.schemas import CorpusJobAblationQuery

    return JobResults(out).ablation(job["id"], CorpusJobAblationQuery(**query))


def endpoint_answer(endpoint, **request):
    from headscope.schemas import CorpusAblationRequest

    source = {} if "texts" in request else {"n_sequences": SEQUENCES}
    return endpoint.corpus_ablation(CorpusAblationRequest(**source, **request))


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_grid_equals_the_endpoints_all_heads_grid(mode, zero_job, mean_job, endpoint):
    job, out = zero_job if mode == "zero" else mean_job
    assert job["sequences"] == SEQUENCES and job["shards"] == SEQUENCES // SHARD_SEQUENCES
    ours = job_answer(out, job, tag=TAG)
    theirs = endpoint_answer(endpoint, all_heads=True, tag=TAG, mode=mode)
    assert theirs.predictions > 0
    assert ours.predictions == theirs.predictions
    assert ours.mean_loss_before == pytest.approx(theirs.mean_loss_before, rel=GRID_RTOL)
    for layer, row in enumerate(ours.grid):
        for head, value in enumerate(row):
            if (layer, head) in HEADS:
                expected = theirs.grid[layer][head]
                assert value == pytest.approx(expected, rel=GRID_RTOL, abs=1e-9)
            else:
                assert value is None  # not run: no number pretends otherwise
    assert any(abs(theirs.grid[layer][head]) > 1e-4 for layer, head in HEADS)
    if mode == "mean":
        # The mean z came from the job's corpus exactly as the server takes it from the same file.
        assert ours.means == theirs.means
        from headscope.jobs.ablation import AblationJob, with_means
        from headscope.jobs.source import CorpusFile

        corpus = CorpusFile.open(job["corpus"])
        job_mean = with_means(AblationJob(mode="mean", heads=HEADS), corpus, endpoint.runtime)
        server_mean, _ = endpoint.mean_z()
        assert np.array_equal(np.asarray(job_mean.mean_z, dtype=np.float32), server_mean.ravel())


def test_one_heads_rows_equal_the_endpoints_by_tag(zero_job, endpoint):
    job, out = zero_job
    layer, head = HEADS[2]
    ours = job_answer(out, job, layer=layer, head=head)
    theirs = endpoint_answer(endpoint, heads=[{"layer": layer, "head": head}], mode="zero")
    assert ours.predictions == theirs.predictions
    assert {row.tag for row in ours.by_next_tag} == {row.tag for row in theirs.by_next_tag}
    expected = {row.tag: row for row in theirs.by_next_tag}
    for row in ours.by_next_tag:
        assert row.tokens == expected[row.tag].tokens
        # Both add the same float32 losses and differences in float64: equal to round-off.
        assert row.mean_loss_before == pytest.approx(expected[row.tag].mean_loss_before, rel=1e-9)
        assert row.mean_loss_change == pytest.approx(
            expected[row.tag].mean_loss_change, rel=1e-9, abs=1e-12
        )
    assert any(abs(row.mean_loss_change) > 1e-4 for row in ours.by_next_tag)


def test_the_losses_are_the_endpoints(runtime, ablation_corpus):
    """The job's losses (every position) are bit for bit those of the grid (some positions) and
    of /v1/corpus/ablation with one head (clean and ablated runs of their own)."""
    from headscope.jobs.source import CorpusFile
    from headscope.jobs.statistics import encode_truncated

    text = next(iter(CorpusFile.open(str(ablation_corpus)).sequences()))
    ids = encode_truncated(runtime, text)[0].ids
    clean, ablated = runtime.runner.single_head_losses(ids, list(HEADS))
    positions = [1, len(ids) // 2, len(ids) - 3]
    some_clean, some_ablated = runtime.runner.single_head_losses(
        ids, list(HEADS), positions=positions
    )
    assert np.array_equal(clean[positions], some_clean)
    assert np.array_equal(ablated[:, positions], some_ablated)
    alone = runtime.runner.ablate(ids, [HEADS[2]])
    assert np.array_equal(alone.loss[0], clean)
    assert np.array_equal(alone.loss[1], ablated[2])


def test_merge_does_not_depend_on_the_shard_order(zero_job):
    from safetensors.numpy import load_file

    from headscope.jobs.run import STATISTICS_FILE, reduce_shards

    _, out = zero_job
    written = load_file(out / STATISTICS_FILE)
    shards = list(range(SEQUENCES // SHARD_SEQUENCES))
    random.Random(0).shuffle(shards)
    assert shards != sorted(shards)
    shuffled, _ = reduce_shards(out, order=shards)
    names = [name for name in written if name.startswith("ablation.")]
    assert "ablation.change" in names
    for name in names:
        np.testing.assert_allclose(shuffled[name], written[name], rtol=1e-12, atol=0)
    assert written["ablation.change"].any()


@pytest.fixture(scope="module")
def sequence_shards(ablation_corpus, tmp_path_factory):
    """A zero-ablation job with one sequence per shard, and its texts in corpus order: its
    bootstrap over shards is the endpoint's bootstrap over sequences."""
    from headscope.jobs.source import CorpusFile

    out = tmp_path_factory.mktemp("jobs") / "sequence-shards"
    job, out = run_ablation_job(ablation_corpus, out, "zero", shard_sequences=1)
    texts = list(CorpusFile.open(str(ablation_corpus)).sequences())
    assert job["shards"] == len(texts) == SEQUENCES
    return job, out, texts


def bounds(interval):
    return np.array([interval.low, interval.high], dtype=float)


@pytest.mark.parametrize("seed", [0, 7])
def test_intervals_equal_the_endpoints_with_one_sequence_per_shard(sequence_shards, endpoint, seed):
    job, out, texts = sequence_shards
    layer, head = HEADS[2]
    ours = job_answer(out, job, layer=layer, head=head, seed=seed)
    theirs = endpoint_answer(
        endpoint, texts=texts, heads=[{"layer": layer, "head": head}], mode="zero", seed=seed
    )
    expected = {row.tag: row for row in theirs.by_next_tag}
    defined = 0
    for row in ours.by_next_tag:
        np.testing.assert_allclose(
            bounds(row.ci), bounds(expected[row.tag].ci), rtol=1e-9, atol=1e-12, equal_nan=True
        )
        assert ours.ci.mean_loss_change[row.tag] == row.ci
        defined += row.ci.low is not None
    assert defined > 0

    ours = job_answer(out, job, tag=TAG, seed=seed)
    theirs = endpoint_answer(endpoint, texts=texts, all_heads=True, tag=TAG, seed=seed)
    for layer_, head_ in HEADS:
        for side in ("low", "high"):
            mine = getattr(ours.ci.grid, side)[layer_][head_]
            other = getattr(theirs.ci.grid, side)[layer_][head_]
            assert (mine is None) == (other is None)
            if mine is not None:
                assert mine == pytest.approx(other, rel=GRID_RTOL, abs=1e-9)
    assert ours.ci.grid.low[1][1] is None  # a head the job did not run has no interval either


def test_the_server_answers_from_the_finished_job(settings, runtime, zero_job, tmp_path):
    from fastapi.testclient import TestClient

    from headscope.app import create_app

    job, out = zero_job
    shutil.copytree(out, tmp_path / "zero")
    app_settings = settings.model_copy(update={"jobs_dir": tmp_path})
    with TestClient(create_app(app_settings, runtime=runtime)) as client:
        listed = client.get(f"/v1/corpus/jobs/{job['id']}").json()
        assert listed["statistics"] == ["ablation"]
        assert listed["ablation"]["heads"] == [{"layer": a, "head": b} for a, b in sorted(HEADS)]
        response = client.get(f"/v1/corpus/jobs/{job['id']}/ablation", params={"tag": TAG})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["grid"] == job_answer(out, job, tag=TAG).model_dump()["grid"]
        assert body["source"]["kind"] == "job" and body["source"]["job"] == job["id"]

        not_run = client.get(
            f"/v1/corpus/jobs/{job['id']}/ablation", params={"layer": 1, "head": 1}
        )
        assert not_run.status_code == 404
        assert not_run.json()["error"]["code"]
        neither = client.get(f"/v1/corpus/jobs/{job['id']}/ablation")
        assert neither.status_code == 422
        unknown_tag = client.get(f"/v1/corpus/jobs/{job['id']}/ablation", params={"tag": "XYZ"})
        assert unknown_tag.status_code == 422
        assert unknown_tag.json()["error"]["message"]


def test_ray_actors_compute_the_same_sums(ray_cluster, ablation_corpus, mean_job, tmp_path):
    """The ablation options (mean z included) reach Ray actors: the same sums as in process."""
    from safetensors.numpy import load_file

    from headscope.jobs.ablation import AblationJob
    from headscope.jobs.run import STATISTICS_FILE, JobSpec, WorkerConfig, run_job

    _, local_out = mean_job
    spec = JobSpec(
        corpus=str(ablation_corpus),
        kinds=("ablation",),
        out=tmp_path / "ray",
        worker=WorkerConfig(model=str(STANDIN_DIR)),
        shard_sequences=SHARD_SEQUENCES,
        ablation=AblationJob(mode="mean", heads=HEADS),
    )
    run_job(spec, engine="ray", workers=2, progress=False)
    local = load_file(local_out / STATISTICS_FILE)
    on_ray = load_file(spec.out / STATISTICS_FILE)
    for name in local:
        np.testing.assert_allclose(on_ray[name], local[name], rtol=1e-12, atol=0)
