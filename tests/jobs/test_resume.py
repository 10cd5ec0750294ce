"""A job killed mid-run resumes from the shards it wrote and ends with the same result; the
corpus is read a shard at a time, never whole."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np

from tests.helpers import CORPUS
from tests.jobs.conftest import SHARD_SEQUENCES

KILLED_AFTER = 2  # shards

# Runs the job in a process that SIGKILLs itself once KILLED_AFTER shards are written: the
# kill lands mid-run by construction, with nothing flushed or cleaned up.
KILLED_JOB = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from headscope.jobs.run import run_job
    from tests.jobs.conftest import job_spec

    written = []

    def after(shard):
        written.append(shard.index)
        if len(written) == {killed_after}:
            os.kill(os.getpid(), signal.SIGKILL)

    run_job(job_spec(Path(sys.argv[1]), Path(sys.argv[2])), progress=False, on_shard=after)
    """
).format(killed_after=KILLED_AFTER)


def test_a_killed_job_resumes_to_the_same_result(job_corpus, finished_job, tmp_path):
    from safetensors.numpy import load_file

    from headscope.jobs.run import STATISTICS_FILE, read_job, run_job
    from tests.jobs.conftest import job_spec

    job, finished_out = finished_job
    out = tmp_path / "killed"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_JOB, str(job_corpus), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert read_job(out)["status"] == "running"
    assert len(list((out / "shards").glob("*.sums.safetensors"))) == KILLED_AFTER
    assert not (out / STATISTICS_FILE).exists()

    redone = []
    resumed = run_job(job_spec(job_corpus, out), progress=False, on_shard=redone.append)
    assert resumed["id"] == job["id"]
    assert resumed["status"] == "finished"
    assert sorted(shard.index for shard in redone) == list(range(KILLED_AFTER, job["shards"]))
    assert (resumed["sequences"], resumed["tokens"]) == (job["sequences"], job["tokens"])
    ours = load_file(out / STATISTICS_FILE)
    theirs = load_file(finished_out / STATISTICS_FILE)
    assert ours.keys() == theirs.keys()
    for name, array in theirs.items():
        np.testing.assert_array_equal(ours[name], array, err_msg=name)


def test_another_job_in_the_same_folder_is_refused(job_corpus, finished_job):
    import pytest

    from headscope.errors import StartupError
    from headscope.jobs.run import run_job
    from tests.jobs.conftest import job_spec

    _, out = finished_job
    with pytest.raises(StartupError, match="holds job"):
        run_job(job_spec(job_corpus, out, kinds=("quotes",)), progress=False)


def test_the_corpus_is_read_a_shard_at_a_time(tmp_path):
    """Reading a corpus ten times the sample's size peaks at a few shards' worth of memory."""
    from headscope.jobs.source import CorpusFile

    sample = CORPUS.read_bytes()
    big = tmp_path / "big.txt"
    big.write_bytes(sample * 10)
    corpus = CorpusFile.open(str(big))
    tracemalloc.start()
    try:
        shards = sequences = 0
        for shard in corpus.shards(SHARD_SEQUENCES):
            shards += 1
            sequences += len(shard.texts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sequences == 10 * sum(1 for _ in CorpusFile.open(str(CORPUS)).sequences())
    assert shards == -(-sequences // SHARD_SEQUENCES)
    assert peak < len(sample) / 20, f"peak {peak} bytes while reading {len(sample) * 10}"
