"""`headscope reproduce --quick` end to end on the stand-in: the report's files, its first line,
verdicts that never claim the stand-in reproduces the paper, a self-contained HTML page, and a
second run that takes every stage from the cache."""

from __future__ import annotations

import json
import re

import pytest

from headscope.cli import main
from tests.helpers import CORPUS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_report(standin_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    arguments = ["reproduce", "--quick", "--model", str(standin_dir), "--corpus", str(CORPUS)]
    arguments += ["--out", str(out), "--torch-threads", "1", "--log-level", "warning"]
    assert main(arguments) == 0
    return out, arguments


def test_quick_run_writes_the_report_files(quick_report, capsys):
    out, _ = quick_report
    for name in ("index.html", "report.md", "results.json"):
        assert (out / name).is_file()
    figures = sorted((out / "figures").glob("*.png"))
    assert len(figures) >= 8
    assert all(path.read_bytes()[:8] == PNG_SIGNATURE for path in figures)


def test_first_line_names_the_weights_and_says_not_comparable(quick_report, standin_dir):
    out, _ = quick_report
    results = json.loads((out / "results.json").read_text())
    first = (out / "report.md").read_text().splitlines()[0]
    assert str(standin_dir) in first and results["model"]["weights_sha256"][:16] in first
    assert "NOT TinyStories-1M" in first and "not comparable to the paper" in first
    assert results["paper_weights"] is False and results["quick"] is True

    claims = results["claims"]
    assert len(claims) >= 10
    assert {claim["verdict"] for claim in claims} == {"not comparable"}
    published = [claim for claim in claims if claim["paper"] is not None]
    # The paper's published F1 of L2H0's key probe for ``, from the packaged reference.
    assert published[0]["statement"].startswith("L2H0's key probe recognises ``")
    assert published[0]["paper"] == pytest.approx(0.9966)
    for claim in published:
        if claim["ours"] is not None:
            assert claim["difference"] == pytest.approx(claim["ours"] - claim["paper"])


def test_results_hold_every_number_with_intervals(quick_report):
    out, _ = quick_report
    results = json.loads((out / "results.json").read_text())
    quotes = results["statistics"]["quotes"]
    assert quotes["ci"]["level"] == 0.95 and len(quotes["ci"]["ratio"]["low"]) == 8
    assert set(results["statistics"]["activity"]) == {"before VBD", "on PRP$", "on DT"}
    for comparison in results["grid_comparison"]["key"]:
        assert comparison["paper_support"] >= 20 and comparison["our_support"] >= 20
        assert len(comparison["paper_top"]) == 5
    support = results["probes"]["support"]
    for vector_rows in results["rankings"].values():
        for row in vector_rows:  # a tag with < 20 held-out tokens is never ranked
            assert support[row["tag"]] >= 20


def test_html_is_self_contained(quick_report):
    out, _ = quick_report
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 8
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", page)  # no CDN, no remote file
    assert "not comparable" in page


def test_second_run_resumes_from_the_stage_cache(quick_report, capsys):
    out, arguments = quick_report
    first = json.loads((out / "results.json").read_text())
    assert main(arguments) == 0
    assert "wrote" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    assert [stage["cached"] for stage in again["stages"]] == [True] * len(again["stages"])
    assert again["claims"] == first["claims"]


def test_the_ablation_section_reports_each_case_study_head(quick_report):
    out, _ = quick_report
    results = json.loads((out / "results.json").read_text())
    rows = {(row["head"], row["tag"]): row for row in results["ablation"]}
    assert set(rows) == {("L2H0", "``"), ("L2H0", "''"), ("L6H4", "VBD"), ("L5H5", "NN")}
    for (head, tag), row in rows.items():
        statistic = results["statistics"]["ablation"][f"{head} {tag}"]
        assert statistic["heads"] == [{"layer": int(head[1]), "head": int(head[3:])}]
        if row["predictions"]:
            (by_tag,) = statistic["by_next_tag"]
            assert row["mean_loss_change"] == pytest.approx(by_tag["mean_loss_change"])
            if row["ci_low"] is not None:
                assert row["ci_low"] <= row["mean_loss_change"] <= row["ci_high"]
    markdown = (out / "report.md").read_text()
    assert "## Do these heads matter?" in markdown
    assert "Do these heads matter?" in (out / "index.html").read_text()


def test_the_case_study_heads_are_placed_by_head_scores(quick_report):
    out, _ = quick_report
    results = json.loads((out / "results.json").read_text())
    rows = {(row["kind"], row["head"]): row for row in results["head_scores"]}
    kinds = ("induction", "previous_token", "duplicate_token")
    assert set(rows) == {(k, h) for k in kinds for h in ("L2H0", "L5H5", "L6H4")}
    for (kind, head), row in rows.items():
        grid = results["statistics"]["head_scores"][kind]["scores"]
        layer, index = int(head[1]), int(head[3:])
        assert row["score"] == grid[layer][index]
        assert row["rank"] == 1 + sum(v > row["score"] for line in grid for v in line)
    assert "Where the case studies' heads stand" in (out / "report.md").read_text()
