"""The paper's claims against ours: numbers side by side, a difference, and a verdict.

A claim is either a published number (a probe's F1 for one head and tag, from the packaged
reference) or a statement the paper makes about a head (more active inside quotations, attends
back to earlier past-tense verbs) that headscope turns into a test on our statistic and its
bootstrap interval. Verdicts:

- reproduced / not reproduced: the weights are the paper's (TinyStories-1M) and our number is
  within F1_TOLERANCE of the paper's, or our test passes on the interval;
- not comparable: other weights (the numbers still show what holds on them), or the paper has no
  number for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from headscope.analysis.bootstrap import MIN_SUPPORT_TOKENS

# Our split, tagger version and solver differ from the authors', so equal F1 is not expected to
# the last digit; a head within this of the published score counts as reproduced.
F1_TOLERANCE = 0.05
# Held-out tokens below which a tag's probe scores are never ranked or compared.
MIN_SUPPORT = MIN_SUPPORT_TOKENS
TOP_HEADS = 5

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_COMPARABLE = "not comparable"


@dataclass(frozen=True)
class Claim:
    section: str
    statement: str
    paper: float | None  # the published number, when there is one
    paper_text: str  # how the paper states it
    ours: float | None
    ours_low: float | None  # 95% bootstrap interval, when our number has one
    ours_high: float | None
    difference: float | None  # ours - paper
    holds_here: bool | None  # does the statement hold on these weights?
    verdict: str
    basis: str  # what the verdict rests on

    def as_dict(self) -> dict:
        return asdict(self)


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def published_claim(
    section: str,
    statement: str,
    *,
    paper: float | None,
    ours: float | None,
    support: int | None,
    comparable: bool,
) -> Claim:
    """A published probe score against ours."""
    paper, ours = _number(paper), _number(ours)
    difference = None if paper is None or ours is None else ours - paper
    if not comparable:
        verdict, basis = NOT_COMPARABLE, "other weights than the paper's"
    elif paper is None or ours is None:
        verdict, basis = NOT_COMPARABLE, "no number on one side"
    elif support is not None and support < MIN_SUPPORT:
        verdict, basis = NOT_COMPARABLE, f"only {support} held-out tokens (< {MIN_SUPPORT})"
    else:
        close = abs(difference) <= F1_TOLERANCE  # type: ignore[arg-type]
        verdict = REPRODUCED if close else NOT_REPRODUCED
        basis = f"|difference| {'<=' if close else '>'} {F1_TOLERANCE}"
    return Claim(
        section,
        statement,
        paper,
        "—" if paper is None else f"{paper:.3f}",
        ours,
        None,
        None,
        difference,
        None,
        verdict,
        basis + ("" if support is None else f"; our support {support}"),
    )


def statement_claim(
    section: str,
    statement: str,
    *,
    paper_text: str,
    ours: float | None,
    interval: tuple[float | None, float | None] | None,
    threshold: float,
    threshold_text: str,
    comparable: bool,
    warning: str | None = None,
) -> Claim:
    """A statement of the paper, tested as: our interval lies above `threshold`."""
    ours = _number(ours)
    low, high = (None, None) if interval is None else (_number(interval[0]), _number(interval[1]))
    if ours is None:
        holds = None
    elif low is not None:
        holds = low > threshold
    else:
        holds = ours > threshold
    basis = (
        f"95% interval {'above' if holds else 'not above'} {threshold_text}"
        if holds is not None
        else "no tokens to measure it on"
    )
    if warning:
        basis += "; small support"
    if not comparable:
        verdict = NOT_COMPARABLE
        basis = "other weights than the paper's; " + basis
    elif holds is None:
        verdict = NOT_COMPARABLE
    else:
        verdict = REPRODUCED if holds else NOT_REPRODUCED
    return Claim(section, statement, None, paper_text, ours, low, high, None, holds, verdict, basis)


@dataclass(frozen=True)
class GridComparison:
    vector: str
    tag: str
    paper_support: int
    our_support: int
    spearman: float | None  # rank correlation of F1 over every head
    paper_top: list[str]
    our_top: list[str]
    shared_top: int  # heads in both top lists

    def as_dict(self) -> dict:
        return asdict(self)


def top_heads(grid: np.ndarray, count: int = TOP_HEADS) -> list[str]:
    """The `count` best heads of a [layer, head] grid, best first, ties by position."""
    n_heads = grid.shape[1]
    filled = np.where(np.isnan(grid), -np.inf, grid).ravel()
    order = np.argsort(-filled, kind="stable")[:count]
    return [head_name(int(i) // n_heads, int(i) % n_heads) for i in order]


def spearman(first: np.ndarray, second: np.ndarray) -> float | None:
    """Spearman's rank correlation of two grids over every head; None when one is constant."""
    from scipy.stats import spearmanr

    a, b = np.ravel(first), np.ravel(second)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def compare_grids(
    vector: str,
    tags: Sequence[str],
    paper_f1: dict[str, np.ndarray],
    paper_support: dict[str, int],
    our_f1: dict[str, np.ndarray],
    our_support: dict[str, int],
) -> list[GridComparison]:
    """Per tag with at least MIN_SUPPORT held-out tokens on both sides."""
    rows = []
    for tag in tags:
        if tag not in paper_f1 or tag not in our_f1:
            continue
        if paper_support.get(tag, 0) < MIN_SUPPORT or our_support.get(tag, 0) < MIN_SUPPORT:
            continue
        paper_top, our_top = top_heads(paper_f1[tag]), top_heads(our_f1[tag])
        rows.append(
            GridComparison(
                vector=vector,
                tag=tag,
                paper_support=paper_support[tag],
                our_support=our_support[tag],
                spearman=spearman(paper_f1[tag], our_f1[tag]),
                paper_top=paper_top,
                our_top=our_top,
                shared_top=len(set(paper_top) & set(our_top)),
            )
        )
    return rows
