"""The same job on a local Ray instance started by the test (127.0.0.1, two actors): the same
sums as the local engine, also when a worker is killed mid-run (Ray restarts it and retries its
shard)."""

from __future__ import annotations

import os
import signal

import numpy as np

from tests.jobs.conftest import job_spec


def assert_same_statistics(out, expected_out):
    from safetensors.numpy import load_file

    from headscope.jobs.run import STATISTICS_FILE

    ours, theirs = load_file(out / STATISTICS_FILE), load_file(expected_out / STATISTICS_FILE)
    assert ours.keys() == theirs.keys()
    for name, array in theirs.items():
        np.testing.assert_array_equal(ours[name], array, err_msg=name)


def test_ray_engine_equals_local(ray_cluster, job_corpus, finished_job, tmp_path):
    from headscope.jobs.run import run_job

    job, expected_out = finished_job
    on_ray = run_job(
        job_spec(job_corpus, tmp_path / "ray"), engine="ray", workers=2, progress=False
    )
    assert on_ray["id"] == job["id"]
    assert on_ray["last_run"]["engine"] == "ray"
    assert (on_ray["shards"], on_ray["tokens"]) == (job["shards"], job["tokens"])
    assert_same_statistics(tmp_path / "ray", expected_out)


def test_a_killed_ray_worker_loses_no_shard(ray_cluster, job_corpus, finished_job, tmp_path):
    from headscope.jobs.run import actor_name, run_job

    job, expected_out = finished_job
    killed = []

    def kill_a_worker(shard):
        if not killed:
            actor = ray_cluster.get_actor(actor_name(job["id"], 0))
            pid = ray_cluster.get(actor.pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    done = run_job(
        job_spec(job_corpus, tmp_path / "ray-killed"),
        engine="ray",
        workers=2,
        progress=False,
        on_shard=kill_a_worker,
    )
    assert killed
    assert (done["shards"], done["tokens"]) == (job["shards"], job["tokens"])
    assert_same_statistics(tmp_path / "ray-killed", expected_out)
