"""The README's worked example (case study 1) runs against the stand-in with a small probe run:
it must run and return well-formed results (not the paper's numbers: this is not TinyStories-1M),
and its inside/outside means must agree with the server's own quotations endpoint."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO

EXAMPLE = REPO / "clients" / "examples" / "case_study_quotes.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("case_study_quotes", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    # Registered first: its dataclasses look their module up while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_case_study_runs_and_is_well_formed(example, probes_client):
    study = example.run(probes_client)

    assert len(study.ranking) == 128
    assert len({(scored.layer, scored.head) for scored in study.ranking}) == 128
    scores = [scored.score for scored in study.ranking]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    # The best head's score again, from the grids of the quote tags with held-out support.
    run_tags = probes_client.probes().tags
    grids = [probes_client.probe_scores("key", tag) for tag in ("``", "''") if tag in run_tags]
    scored = [grid for grid in grids if grid.support]
    assert set(study.head.f1) == {grid.tag for grid in scored}
    assert set(study.skipped_tags) == {"``", "''"} - set(study.head.f1)
    best = np.mean([grid.to_numpy() for grid in scored], axis=0).max()  # over [layer, head]
    assert study.head.score == pytest.approx(float(best))

    assert len(study.tokens) == len(study.inside) == len(study.activity)
    assert 0 < sum(study.inside) < len(study.tokens)
    assert all(math.isfinite(value) and value >= 0 for value in study.activity)
    assert study.mean_inside > 0 and study.mean_outside > 0
    assert 0 <= study.attention_to_opening <= 1

    # The server finds the same quotation and, for the chosen head, the same two means.
    quotes = probes_client.quotes(texts=[study.text])
    assert len(quotes.spans) == 1 and quotes.inside_tokens == sum(study.inside)
    layer, head = study.head.layer, study.head.head
    np.testing.assert_allclose(quotes.to_numpy("mean_inside")[layer, head], study.mean_inside, 1e-5)
    np.testing.assert_allclose(
        quotes.to_numpy("mean_outside")[layer, head], study.mean_outside, 1e-5
    )
    np.testing.assert_allclose(
        quotes.to_numpy("attention_to_opening")[layer, head], study.attention_to_opening, 1e-5
    )

    text = example.report(study, top=3)
    assert study.head.name in text and "inside / outside" in text


def test_quotation_finder_handles_merged_and_unclosed_quotes(example, probes_client):
    tokens = probes_client.tag('Mia said, "Hi." Then "Bye').tokens
    found = example.find_quotations(tokens)
    texts = [token.text for token in tokens]
    inside = [text for text, flag in zip(texts, found.inside, strict=True) if flag]
    assert "".join(inside) == "HiBye"  # the unclosed quotation runs to the end
    opening = texts.index(' "')
    assert found.opening[texts.index("Hi")] == opening
    assert not found.inside[texts.index('."')] and not found.outside[texts.index('."')]


def test_case_study_script_runs_from_the_command_line(probes_server):
    completed = subprocess.run(
        [sys.executable, str(EXAMPLE), "--url", probes_server, "--top", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "inside / outside" in completed.stdout
    assert completed.stdout.count("\n  ") > 3
