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


STUDY_SEQUENCES = 20


def test_case_study_runs_and_is_well_formed(example, probes_client):
    study = example.run(probes_client, n_sequences=STUDY_SEQUENCES)

    assert len(study.ranking) == 128
    assert len({(scored.layer, scored.head) for scored in study.ranking}) == 128
    scores = [scored.score for scored in study.ranking]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    # Only quote tags with enough held-out tokens score heads; the rest are named as skipped.
    run_tags = probes_client.probes().tags
    grids = [probes_client.probe_scores("key", tag) for tag in ("``", "''") if tag in run_tags]
    scored = [grid for grid in grids if (grid.support or 0) >= example.MIN_SUPPORT]
    assert set(study.head.f1) == {grid.tag for grid in scored}
    assert set(study.skipped_tags) == {"``", "''"} - set(study.head.f1)
    # The combined score again, by pandas' ranking of the F1 grids and the server's lifts.
    import pandas as pd

    lift = probes_client.quotes(n_sequences=STUDY_SEQUENCES).to_numpy("ratio").ravel()
    parts = [pd.Series(lift)]
    if scored:
        parts.append(pd.Series(np.mean([g.to_numpy() for g in scored], axis=0).ravel()))
    percentile = [1 - (part.rank(method="min", ascending=False) - 1) / 127 for part in parts]
    combined = sum(percentile) / len(percentile)
    by_head = {(h.layer, h.head): h.score for h in study.ranking}
    for index in range(128):
        assert by_head[divmod(index, 16)] == pytest.approx(combined[index])
    assert study.head.lift == pytest.approx(lift[study.head.layer * 16 + study.head.head])

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


def test_without_probes_the_script_says_train_probes_first_in_one_line(corpus_server):
    completed = subprocess.run(
        [sys.executable, str(EXAMPLE), "--url", corpus_server],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert completed.stderr.startswith("train probes first: ")
    assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr


def test_case_study_script_runs_from_the_command_line(probes_server):
    completed = subprocess.run(
        [sys.executable, str(EXAMPLE), "--url", probes_server, "--top", "3"]
        + ["--n-sequences", str(STUDY_SEQUENCES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "inside / outside" in completed.stdout
    assert completed.stdout.count("\n  ") > 3
