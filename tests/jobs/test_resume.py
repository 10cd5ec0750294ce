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


KILLED_SHARD = 2


def kill_this_worker_at_shard(shard):
    """Runs in the worker process as it starts a shard: at KILLED_SHARD the worker dies."""
    import os
    import signal

    if shard.index == KILLED_SHARD:
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_fails_the_job_clearly_and_a_rerun_resumes(
    job_corpus, finished_job, tmp_path
):
    import pytest
    from safetensors.numpy import load_file

    from headscope.jobs.run import STATISTICS_FILE, WorkerDied, read_job, run_job
    from tests.jobs.conftest import job_spec

    job, finished_out = finished_job
    out = tmp_path / "worker-killed"
    with pytest.raises(WorkerDied, match=rf"shards [0-9, ]*\b{KILLED_SHARD}\b.*run the same job"):
        run_job(
            job_spec(job_corpus, out),
            workers=2,
            progress=False,
            on_shard_start=kill_this_worker_at_shard,
        )
    failed = read_job(out)
    assert failed["status"] == "failed" and str(KILLED_SHARD) in failed["error"]
    assert not (out / STATISTICS_FILE).exists()
    written = sorted(out.glob("shards/*.sums.safetensors"))
    assert f"{KILLED_SHARD:06d}.sums.safetensors" not in {path.name for path in written}
    for path in written:  # every shard file in place is whole
        assert load_file(path)["sequences"][0] == SHARD_SEQUENCES

    redone = []
    resumed = run_job(job_spec(job_corpus, out), workers=2, progress=False, on_shard=redone.append)
    assert resumed["status"] == "finished" and "error" not in resumed
    assert sorted(shard.index for shard in redone) == sorted(
        set(range(job["shards"])) - {int(path.name[:6]) for path in written}
    )
    ours = load_file(out / STATISTICS_FILE)
    theirs = load_file(finished_out / STATISTICS_FILE)
    assert ours.keys() == theirs.keys()
    for name, array in theirs.items():
        np.testing.assert_array_equal(ours[name], array, err_msg=name)


# Runs the job in a fresh process and prints that process's peak resident set size (KiB).
PEAK_RSS_OF_JOB = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from headscope.jobs.run import run_job
    from tests.jobs.conftest import job_spec

    job = run_job(job_spec(Path(sys.argv[1]), Path(sys.argv[2]), kinds=("quotes",)), progress=False)
    print(job["sequences"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


def test_peak_rss_stays_flat_as_the_corpus_grows_tenfold(job_corpus, tmp_path):
    """A job over ten copies of a corpus peaks at the same resident memory as over one copy."""
    import re

    one = job_corpus.read_text().strip()
    sequences = len(re.split(r"\n\s*\n", one))
    tenfold = tmp_path / "tenfold.txt"
    tenfold.write_text("\n\n".join([one] * 10) + "\n")

    def peak_rss_kib(corpus, out):
        ran = subprocess.run(
            [sys.executable, "-c", PEAK_RSS_OF_JOB, str(corpus), str(out)],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr[-2000:]
        done, peak = map(int, ran.stdout.split()[-2:])
        return done, peak

    done_once, peak_once = peak_rss_kib(job_corpus, tmp_path / "once")
    done_tenfold, peak_tenfold = peak_rss_kib(tenfold, tmp_path / "tenfold")
    assert (done_once, done_tenfold) == (sequences, 10 * sequences)
    margin_kib = max(peak_once * 0.15, 40 * 1024)
    assert peak_tenfold <= peak_once + margin_kib, (peak_once, peak_tenfold)
