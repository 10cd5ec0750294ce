"""A small corpus (the shared sample's first sequences), one finished job over it, and the
corpus endpoints' own analysis of the same sequences to compare with."""

from __future__ import annotations

import os

import pytest

from tests.helpers import CORPUS, STANDIN_DIR

JOB_SEQUENCES = 40
SHARD_SEQUENCES = 8
ALL_KINDS = ("activity-by-tag", "attention-by-tag", "quotes", "probe-features")


def require_ray():
    """Ray, or a skip; in CI (CI=true) a failure, since scripts/test.sh installs the extra."""
    try:
        import ray
    except ImportError:
        reason = "ray is not installed (pip install 'headscope[ray]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI must run the Ray tests")
        pytest.skip(reason)
    return ray


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance on 127.0.0.1 (two CPUs, no dashboard), started for the tests."""
    ray = require_ray()
    from headscope.jobs.run import connect_ray

    connect_ray(None, 2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def job_corpus(tmp_path_factory):
    """The sample's first JOB_SEQUENCES sequences, as a corpus file of their own."""
    from headscope.jobs.source import CorpusFile

    sequences = []
    for text in CorpusFile.open(str(CORPUS)).sequences():
        sequences.append(text)
        if len(sequences) == JOB_SEQUENCES:
            break
    path = tmp_path_factory.mktemp("job-corpus") / "stories.txt"
    path.write_text("\n\n".join(sequences) + "\n")
    return path


def job_spec(corpus, out, kinds=ALL_KINDS, shard_sequences=SHARD_SEQUENCES):
    from headscope.jobs.run import JobSpec, WorkerConfig

    return JobSpec(
        corpus=str(corpus),
        kinds=tuple(kinds),
        out=out,
        worker=WorkerConfig(model=str(STANDIN_DIR)),
        shard_sequences=shard_sequences,
    )


@pytest.fixture(scope="session")
def finished_job(job_corpus, tmp_path_factory):
    """(job.json, OUT) of every job kind over the small corpus, local engine, one worker."""
    from headscope.jobs.run import run_job

    out = tmp_path_factory.mktemp("jobs") / "small"
    job = run_job(job_spec(job_corpus, out), progress=False)
    return job, out


@pytest.fixture(scope="session")
def endpoint_analysis(runtime, job_corpus):
    """The corpus endpoints' analysis, its corpus the small corpus (all of it in one draw)."""
    from headscope.analysis.corpus import CorpusAnalysis
    from headscope.settings import Settings

    settings = Settings(
        model=str(STANDIN_DIR),
        corpus=str(job_corpus),
        corpus_max_sequences=JOB_SEQUENCES,
        corpus_cache_size=0,
    )
    return CorpusAnalysis(runtime, settings)
