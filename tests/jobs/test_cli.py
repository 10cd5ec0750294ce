"""`headscope corpus run`: the command writes a finished job; run again, it finds every shard
written and maps nothing."""

from __future__ import annotations

import json

from tests.helpers import STANDIN_DIR
from tests.jobs.conftest import SHARD_SEQUENCES


def test_corpus_run_writes_a_job_and_resumes(job_corpus, finished_job, tmp_path, capsys):
    from headscope.cli import main

    job, _ = finished_job
    out = tmp_path / "cli-job"
    argv = [
        "corpus",
        "run",
        "--model",
        str(STANDIN_DIR),
        "--corpus",
        str(job_corpus),
        "--job",
        "quotes,activity-by-tag",
        "--shard-sequences",
        str(SHARD_SEQUENCES),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    written = json.loads((out / "job.json").read_text())
    assert written["status"] == "finished"
    assert written["statistics"] == ["activity-by-tag", "quotes"]
    assert (written["sequences"], written["tokens"]) == (job["sequences"], job["tokens"])
    assert f"job {written['id']} finished" in capsys.readouterr().out

    assert main(argv) == 0
    again = json.loads((out / "job.json").read_text())
    assert again["id"] == written["id"]
    assert again["last_run"]["tokens"] == 0  # every shard was already written


def test_unknown_kind_is_a_usage_error(capsys):
    import pytest

    from headscope.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["corpus", "run", "--corpus", "x.txt", "--job", "nope", "--out", "o"])
    assert exited.value.code == 2
    assert "choose from" in capsys.readouterr().err
