"""GET /v1/corpus/jobs: the server lists finished jobs from HEADSCOPE_JOBS_DIR and answers the
corpus questions from one job's sums; unknown ids and bad queries get the error envelope."""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture(scope="module")
def jobs_api(settings, runtime, finished_job, tmp_path_factory):
    from fastapi.testclient import TestClient

    from headscope.app import create_app

    _, out = finished_job
    jobs_dir = tmp_path_factory.mktemp("jobs-dir")
    shutil.copytree(out, jobs_dir / "small")
    # A job still running is not listed.
    shutil.copytree(out, jobs_dir / "unfinished")
    unfinished = jobs_dir / "unfinished" / "job.json"
    unfinished.write_text(json.dumps({**json.loads(unfinished.read_text()), "status": "running"}))
    (jobs_dir / "garbage").mkdir()
    (jobs_dir / "garbage" / "job.json").write_text("{not json")
    app_settings = settings.model_copy(update={"jobs_dir": jobs_dir})
    with TestClient(create_app(app_settings, runtime=runtime)) as client:
        yield client


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


def test_lists_finished_jobs(jobs_api, finished_job):
    job, _ = finished_job
    listed = jobs_api.get("/v1/corpus/jobs").json()["jobs"]
    assert [entry["id"] for entry in listed] == [job["id"]]
    assert listed[0]["status"] == "finished"
    assert listed[0]["tokens"] == job["tokens"]
    by_hash = jobs_api.get("/v1/corpus/jobs", params={"corpus_sha256": job["corpus_sha256"]})
    assert [entry["id"] for entry in by_hash.json()["jobs"]] == [job["id"]]
    other = jobs_api.get("/v1/corpus/jobs", params={"corpus_sha256": "0" * 64})
    assert other.json()["jobs"] == []


def test_one_job_and_its_answers(jobs_api, finished_job):
    from headscope.jobs.results import JobResults
    from headscope.schemas import (
        CorpusJobActivityQuery,
        CorpusJobAttentionQuery,
        CorpusJobQuotesQuery,
    )

    job, out = finished_job
    assert jobs_api.get(f"/v1/corpus/jobs/{job['id']}").json()["sequences"] == job["sequences"]
    reader = JobResults(out)

    activity = jobs_api.get(
        f"/v1/corpus/jobs/{job['id']}/activity-by-tag", params={"tag": "VBD", "position": "before"}
    )
    assert activity.status_code == 200, activity.text
    expected = reader.activity_by_tag(
        job["id"], CorpusJobActivityQuery(tag="VBD", position="before")
    )
    assert activity.json()["lift"] == expected.lift

    attention = jobs_api.get(
        f"/v1/corpus/jobs/{job['id']}/attention-by-tag",
        params={"layer": 5, "head": 5, "from_tag": "PRP$"},
    )
    assert attention.status_code == 200, attention.text
    rows = reader.attention_by_tag(
        job["id"], CorpusJobAttentionQuery(layer=5, head=5, from_tag="PRP$")
    ).rows
    assert attention.json()["rows"] == [row.model_dump() for row in rows]

    quotes = jobs_api.get(f"/v1/corpus/jobs/{job['id']}/quotes", params={"seed": 3})
    assert quotes.status_code == 200
    assert quotes.json()["source"] == {**quotes.json()["source"], "kind": "job", "job": job["id"]}
    expected_quotes = reader.quotes(job["id"], CorpusJobQuotesQuery(seed=3))
    assert quotes.json()["ci"] == expected_quotes.ci.model_dump()
    assert quotes.json()["spans"] == [span.model_dump() for span in expected_quotes.spans] != []


def test_unknown_and_invalid_requests_get_the_envelope(jobs_api, finished_job):
    job, _ = finished_job
    assert_error(jobs_api.get("/v1/corpus/jobs/0123456789abcdef"), 404, "not_found")
    assert_error(jobs_api.get("/v1/corpus/jobs/0123456789abcdef/quotes"), 404, "not_found")
    # Not an id: 422 before any file is looked at; a path with slashes matches no route.
    assert_error(jobs_api.get("/v1/corpus/jobs/..%2F..%2Fetc"), 404, "not_found")
    assert_error(jobs_api.get("/v1/corpus/jobs/XYZ"), 422, "invalid_request")
    base = f"/v1/corpus/jobs/{job['id']}"
    assert_error(
        jobs_api.get(f"{base}/activity-by-tag", params={"tag": "NOPE"}), 422, "invalid_request"
    )
    assert_error(
        jobs_api.get(f"{base}/activity-by-tag", params={"tag": "NN", "position": "near"}),
        422,
        "invalid_request",
    )
    assert_error(
        jobs_api.get(f"{base}/attention-by-tag", params={"layer": 9, "head": 0, "to_tag": "NN"}),
        422,
        "unknown_head",
    )
    assert_error(
        jobs_api.get(f"{base}/attention-by-tag", params={"layer": 1, "head": 0}),
        422,
        "invalid_request",
    )
    assert_error(
        jobs_api.get("/v1/corpus/jobs", params={"corpus_sha256": "zz"}), 422, "invalid_request"
    )
    assert_error(jobs_api.get(f"{base}/quotes", params={"seed": "x"}), 422, "invalid_request")
    assert_error(jobs_api.get(f"{base}/quotes", params={"sead": 1}), 422, "invalid_request")


def test_no_jobs_dir_lists_nothing(api):
    assert api.get("/v1/corpus/jobs").json() == {"jobs": []}
    assert_error(api.get("/v1/corpus/jobs/0123456789abcdef"), 404, "not_found")


def test_a_cut_span_list_says_how_many_were_found(jobs_api, finished_job, monkeypatch):
    from headscope.jobs import results

    job, _ = finished_job
    every = jobs_api.get(f"/v1/corpus/jobs/{job['id']}/quotes").json()
    found = len(every["spans"])
    assert found > 2 and "spans lists" not in (every["warning"] or "")
    monkeypatch.setattr(results, "MAX_SPANS", 2)
    cut = jobs_api.get(f"/v1/corpus/jobs/{job['id']}/quotes").json()
    assert cut["spans"] == every["spans"][:2]
    assert f"spans lists the first 2 of the {found} quotations found" in cut["warning"]
