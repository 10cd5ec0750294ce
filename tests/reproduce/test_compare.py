"""Verdicts and grid comparisons of `headscope reproduce`, and its packaged reference data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from headscope.reproduce.compare import (
    NOT_COMPARABLE,
    NOT_REPRODUCED,
    REPRODUCED,
    compare_grids,
    published_claim,
    spearman,
    statement_claim,
    top_heads,
)
from headscope.reproduce.reference import paper_reference
from tests.helpers import SHARED


def test_published_scores_are_judged_by_the_tolerance_only_on_the_papers_weights():
    close = published_claim("s", "x", paper=0.80, ours=0.78, support=500, comparable=True)
    assert close.verdict == REPRODUCED and close.difference == pytest.approx(-0.02)
    far = published_claim("s", "x", paper=0.80, ours=0.60, support=500, comparable=True)
    assert far.verdict == NOT_REPRODUCED
    thin = published_claim("s", "x", paper=0.80, ours=0.80, support=3, comparable=True)
    assert thin.verdict == NOT_COMPARABLE and "3 held-out" in thin.basis
    other = published_claim("s", "x", paper=0.80, ours=0.80, support=500, comparable=False)
    assert other.verdict == NOT_COMPARABLE and other.difference == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("ours", "interval", "comparable", "verdict", "holds_here"),
    [
        (2.0, (1.2, 3.0), True, REPRODUCED, True),
        (1.5, (0.9, 2.0), True, NOT_REPRODUCED, False),  # the interval straddles the threshold
        (2.0, (1.2, 3.0), False, NOT_COMPARABLE, True),  # holds, but on other weights
    ],
)
def test_statements_are_judged_on_the_lower_bound(ours, interval, comparable, verdict, holds_here):
    claim = statement_claim(
        "s",
        "x",
        paper_text="-",
        ours=ours,
        interval=interval,
        threshold=1.0,
        threshold_text="1",
        comparable=comparable,
    )
    assert claim.verdict == verdict and claim.holds_here is holds_here


def test_grid_comparison_ranks_heads_and_skips_thin_tags():
    rng = np.random.default_rng(0)
    paper = rng.random((8, 16))
    ours = paper + rng.normal(scale=0.01, size=paper.shape)
    rows = compare_grids(
        "key",
        ["VBD", "FW"],
        {"VBD": paper, "FW": paper},
        {"VBD": 400, "FW": 4},
        {"VBD": ours, "FW": ours},
        {"VBD": 300, "FW": 300},
    )
    [row] = rows  # FW has 4 held-out tokens in the paper: never compared
    assert row.tag == "VBD" and row.spearman > 0.99
    flat = int(np.argmax(paper))
    assert row.paper_top[0] == f"L{flat // 16}H{flat % 16}" == top_heads(paper)[0]
    assert spearman(np.ones((2, 2)), paper[:2, :2]) is None


def test_packaged_reference_equals_the_published_file():
    reference = paper_reference()
    assert "08a8a3a" in reference.provenance["source"]
    published = SHARED / "reference" / "paper-probe-results.json"
    if not published.is_file():
        pytest.skip("../shared/reference is not here")
    raw = published.read_bytes()
    assert reference.provenance["compacted_from_sha256"] == hashlib.sha256(raw).hexdigest()
    data = json.loads(raw)["vectors"]
    for vector in ("key", "query"):
        tags = data[vector]["tags"]
        np.testing.assert_array_equal(reference.vectors[vector].f1, np.asarray(data[vector]["f1"]))
        assert (
            reference.vectors[vector].support["VBD"] == data[vector]["support"][tags.index("VBD")]
        )
    assert reference.vectors["key"].f1_of("VBD")[6, 4] == pytest.approx(0.7962)
