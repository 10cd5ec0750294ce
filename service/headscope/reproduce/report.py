"""From the stages' results to the report: claims, grid comparisons, rankings, figures, and the
three files (results.json with every number, report.md, a self-contained index.html)."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headscope.analysis.probes.pipeline import summary_rows
from headscope.analysis.probes.store import ProbeRun
from headscope.reproduce.compare import (
    MIN_SUPPORT,
    Claim,
    GridComparison,
    compare_grids,
    head_name,
    published_claim,
    statement_claim,
)
from headscope.reproduce.reference import PAPER_MODEL, paper_reference
from headscope.reproduce.study import (
    PAST_TENSE_HEAD,
    POSSESSIVE_HEAD,
    QUOTE_HEAD,
)

RESULTS_FILE = "results.json"
MARKDOWN_FILE = "report.md"
HTML_FILE = "index.html"
FIGURES_FOLDER = "figures"
QUICK_NOTE = "quick (a few sequences: a smoke test, not a result)"


def is_paper_model(model_id: str) -> bool:
    """The paper's weights, as far as headscope can tell: loaded by the paper's hub id (the
    report prints the fingerprint, so a reader can check it against the hub's file)."""
    return model_id == PAPER_MODEL


def headline(model_id: str, weights_sha256: str) -> str:
    weights = f"Weights: {model_id} (weights sha256 {weights_sha256[:16]}…)"
    if is_paper_model(model_id):
        return f"{weights}: TinyStories-1M, the paper's model (identified by its hub id)."
    return (
        f"{weights}: NOT TinyStories-1M, so the numbers are not comparable to the paper; "
        "they show what holds on these weights."
    )


def _at(grid: list | None, head: tuple[int, int]) -> float | None:
    if grid is None:
        return None
    value = grid[head[0]][head[1]]
    return None if value is None else float(value)


def _ci_at(ci: dict | None, name: str, head: tuple[int, int]) -> tuple | None:
    if not ci:
        return None
    return (_at(ci[name]["low"], head), _at(ci[name]["high"], head))


def _row(attention: dict, tag: str) -> tuple[float | None, float | None, tuple | None]:
    """(attention, uniform baseline, interval) of one tag's row in an attention-by-tag result."""
    for row in attention["rows"]:
        if row["tag"] == tag:
            bounds = (attention.get("ci") or {}).get("attention", {}).get(tag)
            interval = None if bounds is None else (bounds["low"], bounds["high"])
            return row["attention"], row["frequency"], interval
    return None, None, None


def build_claims(
    run: ProbeRun, quotes: dict, activity: dict, attention: dict, comparable: bool
) -> list[Claim]:
    paper = paper_reference().vectors

    def published(section: str, vector: str, tag: str, head: tuple[int, int]) -> Claim:
        paper_grid = paper[vector].f1_of(tag)
        ours, support = (None, None)
        if tag in run.tags:
            grid, support = run.scores(vector, tag, "f1")
            ours = float(grid[head])
        return published_claim(
            section,
            f"{head_name(*head)}'s {vector} probe recognises {tag} (held-out F1)",
            paper=None if paper_grid is None else float(paper_grid[head]),
            ours=ours,
            support=support,
            comparable=comparable,
        )

    def lift(section: str, statement: str, key: str, head: tuple[int, int]) -> Claim:
        result = activity[key]
        return statement_claim(
            section,
            statement,
            paper_text="higher than average (shown, no number)",
            ours=_at(result["lift"], head),
            interval=_ci_at(result.get("ci"), "lift", head),
            threshold=1.0,
            threshold_text="1 (no lift)",
            comparable=comparable,
            warning=result.get("warning"),
        )

    def attends(section: str, statement: str, key: str, tag: str) -> Claim:
        value, uniform, interval = _row(attention[key], tag)
        return statement_claim(
            section,
            statement,
            paper_text="above uniform (shown, no number)",
            ours=value,
            interval=interval,
            threshold=uniform if uniform is not None else np.inf,
            threshold_text=f"uniform attention ({uniform:.3f})" if uniform is not None else "—",
            comparable=comparable,
            warning=attention[key].get("warning"),
        )

    one, two, three = "Case study 1: quotes", "Case study 2: past tense", "Case study 3: PRP$"
    claims = [
        published(one, "key", "``", QUOTE_HEAD),
        published(one, "key", "''", QUOTE_HEAD),
    ]
    opening = quotes.get("attention_to_opening")
    median_head = float(np.median(np.asarray(opening))) if opening is not None else None
    claims += [
        statement_claim(
            one,
            f"{head_name(*QUOTE_HEAD)} is more active inside quotations than outside "
            "(inside / outside activity)",
            paper_text="more active inside (shown, no number)",
            ours=_at(quotes.get("ratio"), QUOTE_HEAD),
            interval=_ci_at(quotes.get("ci"), "ratio", QUOTE_HEAD),
            threshold=1.0,
            threshold_text="1 (no difference)",
            comparable=comparable,
            warning=quotes.get("warning"),
        ),
        statement_claim(
            one,
            f"Inside quotations, {head_name(*QUOTE_HEAD)} attends to the opening quote mark "
            "(mean attention weight on it)",
            paper_text="attends to the quote mark (shown, no number)",
            ours=_at(opening, QUOTE_HEAD),
            interval=_ci_at(quotes.get("ci"), "attention_to_opening", QUOTE_HEAD),
            threshold=median_head if median_head is not None else np.inf,
            threshold_text="the median head's"
            + ("" if median_head is None else f" ({median_head:.3f})"),
            comparable=comparable,
            warning=quotes.get("warning"),
        ),
        published(two, "key", "VBD", PAST_TENSE_HEAD),
        lift(
            two,
            f"{head_name(*PAST_TENSE_HEAD)} is active just before past-tense verbs (lift before "
            "VBD)",
            "before VBD",
            PAST_TENSE_HEAD,
        ),
        attends(
            two,
            f"{head_name(*PAST_TENSE_HEAD)} attends from past-tense verbs back to earlier ones "
            "(attention VBD -> VBD)",
            f"L{PAST_TENSE_HEAD[0]}H{PAST_TENSE_HEAD[1]} from VBD",
            "VBD",
        ),
        published(three, "query", "PRP$", POSSESSIVE_HEAD),
        lift(
            three,
            f"{head_name(*POSSESSIVE_HEAD)} is active on possessive pronouns (lift on PRP$)",
            "on PRP$",
            POSSESSIVE_HEAD,
        ),
        lift(
            three,
            f"{head_name(*POSSESSIVE_HEAD)} is active on determiners (lift on DT)",
            "on DT",
            POSSESSIVE_HEAD,
        ),
        attends(
            three,
            f"{head_name(*POSSESSIVE_HEAD)} attends from possessive pronouns back to nouns "
            "(attention PRP$ -> NN; Appendix C)",
            f"L{POSSESSIVE_HEAD[0]}H{POSSESSIVE_HEAD[1]} from PRP$",
            "NN",
        ),
    ]
    return claims


def grid_comparisons(run: ProbeRun) -> dict[str, list[GridComparison]]:
    paper = paper_reference().vectors
    support = run.manifest["metrics"]["support"]
    result: dict[str, list[GridComparison]] = {}
    for vector in ("key", "query"):
        if vector not in run.vectors:
            continue
        reference = paper[vector]
        paper_f1 = {tag: reference.f1_of(tag) for tag in reference.tags}
        our_f1 = {tag: run.scores(vector, tag, "f1")[0] for tag in run.tags}
        result[vector] = compare_grids(
            vector,
            sorted(set(reference.tags) & set(run.tags)),
            paper_f1,  # type: ignore[arg-type]
            reference.support,
            our_f1,
            support,
        )
    return result


def selectivity_rows(run: ProbeRun) -> list[dict[str, Any]]:
    """The case-study heads' F1 against the control task's, and each vector's accuracy
    selectivity (Hewitt & Liang): how much of a probe's score the head's vector explains."""
    rows = []
    for vector, tag, head in (
        ("key", "``", QUOTE_HEAD),
        ("key", "''", QUOTE_HEAD),
        ("key", "VBD", PAST_TENSE_HEAD),
        ("query", "PRP$", POSSESSIVE_HEAD),
    ):
        if tag not in run.tags or vector not in run.vectors:
            continue
        f1 = run.scores(vector, tag, "f1")[0][head]
        selectivity = run.scores(vector, tag, "selectivity")[0][head]
        rows.append(
            {
                "head": head_name(*head),
                "vector": vector,
                "tag": tag,
                "f1": float(f1),
                "control_f1": float(f1 - selectivity),
                "selectivity": float(selectivity),
            }
        )
    return rows


def ranking_rows(ranking: dict[str, dict[str, dict]], top: int = 5) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for vector, by_tag in ranking.items():
        rows[vector] = [
            {
                "tag": tag,
                "support": result.get("probe_support"),
                "heads": [
                    {
                        "head": head_name(h["layer"], h["head"]),
                        "probe_f1": h["probe_score"],
                        "lift": h["lift"],
                        "combined_score": h["combined_score"],
                    }
                    for h in result["heads"][:top]
                ],
            }
            for tag, result in sorted(by_tag.items())
        ]
    return rows


@dataclass
class Report:
    headline: str
    results: dict[str, Any]
    claims: list[Claim]
    grids: dict[str, list[GridComparison]]
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG file
    figure_captions: dict[str, str] = field(default_factory=dict)


# -- output ------------------------------------------------------------------------------------


ABLATION_NOTE = (
    "Each case study's head zero-ablated alone (its z replaced by zeros before W_O), over the "
    "same draw of sequences: the mean change in next-token loss (nats) on predictions of a "
    "token with the tag, with its 95% bootstrap interval over sequences. Above 0: the model "
    "predicts that tag worse without the head. Beyond the paper, which left the heads' effect "
    "on the output unassessed."
)


def ablation_rows(ablation: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per (head, tag) of the ablation stage."""
    rows = []
    for key, result in ablation.items():
        head, tag = key.split(" ", 1)
        row = next(iter(result.get("by_next_tag") or []), None)
        interval = (result.get("ci") or {}).get("mean_loss_change") or {}
        rows.append(
            {
                "head": head,
                "tag": tag,
                "predictions": row["tokens"] if row else 0,
                "mean_loss_before": row["mean_loss_before"] if row else None,
                "mean_loss_change": row["mean_loss_change"] if row else None,
                "ci_low": (interval.get(tag) or {}).get("low"),
                "ci_high": (interval.get(tag) or {}).get("high"),
                "warning": result.get("warning"),
            }
        )
    return rows


def _ablation_cells(row: dict[str, Any]) -> list[str]:
    interval = f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
    return [
        row["head"],
        row["tag"],
        str(row["predictions"]),
        _fmt(row["mean_loss_before"]),
        f"{_fmt(row['mean_loss_change'])} {interval}",
    ]


# The case studies' heads, placed among every head by the standard scores.
SCORED_HEADS = ((2, 0), (5, 5), (6, 4))
HEAD_SCORES_NOTE = (
    "The standard per-head scores on repeated random tokens (GET /v1/heads/scores, whose "
    "description gives the method), for the case studies' heads: the score and its rank among "
    "all heads (1 = highest). The paper suggests L6H4 and L5H5 act as part-of-speech induction "
    "heads."
)


def head_score_rows(head_scores: dict[str, dict]) -> list[dict[str, Any]]:
    """Per kind and case-study head: its score and rank among every head."""
    rows = []
    for kind, result in head_scores.items():
        scores = result["scores"]
        flat = sorted((value for row in scores for value in row), reverse=True)
        for layer, head in SCORED_HEADS:
            if layer >= len(scores) or head >= len(scores[layer]):
                continue  # a smaller model of the family has no such head
            value = scores[layer][head]
            rows.append(
                {
                    "kind": kind,
                    "head": f"L{layer}H{head}",
                    "score": value,
                    "rank": 1 + sum(other > value for other in flat),
                    "heads": len(flat),
                }
            )
    return rows


def _head_score_cells(row: dict[str, Any]) -> list[str]:
    return [row["kind"], row["head"], _fmt(row["score"]), f"{row['rank']} of {row['heads']}"]


HEAD_SCORE_HEADER = ["score", "head", "value", "rank"]

ABLATION_HEADER = ["head", "next-token tag", "predictions", "loss", "loss change [95% CI]"]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        value = value if round(value, digits) != 0 else 0.0  # never "-0.000"
        return f"{value:.{digits}f}"
    return str(value)


def _ours(claim: Claim) -> str:
    text = _fmt(claim.ours)
    if claim.ours_low is not None and claim.ours_high is not None:
        text += f" [{claim.ours_low:.3f}, {claim.ours_high:.3f}]"
    return text


def _difference(claim: Claim) -> str:
    return "—" if claim.difference is None else f"{claim.difference:+.3f}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(report: Report) -> str:
    results = report.results
    model, corpus, run = results["model"], results["corpus"], results["probes"]
    lines = [
        report.headline,
        "",
        "# headscope reproduce: attention heads with linguistic jobs",
        "",
        f"- model: `{model['model_id']}`, {model['n_layers']} layers × {model['n_heads']} heads, "
        f"head size {model['d_head']}; weights sha256 `{model['weights_sha256']}`",
        f"- corpus: `{corpus['source']}` ({corpus['sequences']} sequences, sha256 "
        f"`{corpus['sha256'][:16]}…`)",
        f"- probes: run `{run['run_id']}`, {run['train_sequences']} + {run['test_sequences']} "
        f"sequences ({run['train_tokens']} / {run['test_tokens']} tokens), multinomial logistic "
        "regression per head and vector (key, query, value), with the control task",
        f"- corpus statistics: {results['config']['corpus_sequences']} sequences drawn with seed "
        f"{results['config']['seed']}, 95% bootstrap intervals over sequences",
        f"- mode: {QUICK_NOTE if results['quick'] else 'full'}; run time "
        f"{results['run_seconds']:.1f} s",
        f"- paper's numbers: {results['reference']['provenance']['source']}",
        "",
        "## The paper's claims, side by side",
        "",
        "| section | claim | paper | ours [95% CI] | difference | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for claim in report.claims:
        lines.append(
            f"| {claim.section} | {_md_cell(claim.statement)} | {_md_cell(claim.paper_text)} | "
            f"{_ours(claim)} | {_difference(claim)} | **{claim.verdict}** ({claim.basis}) |"
        )
    lines += [
        "",
        "## Probe grids: paper vs. ours, per tag",
        "",
        f"Spearman rank correlation of F1 over all {model['n_layers'] * model['n_heads']} heads, "
        f"and the top {5} heads on each side; tags with at least {MIN_SUPPORT} held-out tokens on "
        "both sides only.",
        "",
    ]
    for vector, rows in report.grids.items():
        lines += [
            f"### {vector} probes",
            "",
            "| tag | support (paper / ours) | Spearman ρ | paper top 5 | our top 5 | shared |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {_md_cell(row.tag)} | {row.paper_support} / {row.our_support} | "
                f"{_fmt(row.spearman)} | {' '.join(row.paper_top)} | {' '.join(row.our_top)} | "
                f"{row.shared_top} |"
            )
        if not rows:
            lines.append("| (no tag with enough support on both sides) | | | | | |")
        lines.append("")
    lines += ["## Do these heads matter?", "", ABLATION_NOTE, ""]
    lines += ["| " + " | ".join(ABLATION_HEADER) + " |", "|---|---|---|---|---|"]
    for row in results.get("ablation", []):
        lines.append("| " + " | ".join(_md_cell(cell) for cell in _ablation_cells(row)) + " |")
    lines += ["", "### Where the case studies' heads stand", "", HEAD_SCORES_NOTE, ""]
    lines += ["| " + " | ".join(HEAD_SCORE_HEADER) + " |", "|---|---|---|---|"]
    for row in results.get("head_scores", []):
        lines.append("| " + " | ".join(_head_score_cells(row)) + " |")
    lines += [
        "",
        "## Beyond the paper",
        "",
        "### Selectivity against the control task",
        "",
        "| head | vector | tag | F1 | control F1 | selectivity |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["selectivity"]:
        lines.append(
            f"| {row['head']} | {row['vector']} | {_md_cell(row['tag'])} | {row['f1']:.3f} | "
            f"{row['control_f1']:.3f} | {row['selectivity']:+.3f} |"
        )
    lines += ["", "| vector | mean accuracy | mean macro-F1 | mean selectivity (accuracy) |"]
    lines.append("|---|---|---|---|")
    for row in run["summary"]:
        lines.append(
            f"| {row['vector']} | {row['mean_accuracy']:.3f} | {row['mean_macro_f1']:.3f} | "
            f"{_fmt(row['mean_selectivity'])} |"
        )
    lines += [
        "",
        "### Heads ranked per tag (probe F1 and activity lift on the tag, combined)",
        "",
        f"Only tags with at least {MIN_SUPPORT} held-out tokens are ranked. combined = mean of "
        "the two percentile ranks.",
        "",
    ]
    for vector, rows in results["rankings"].items():
        lines += [f"#### {vector} probes", "", "| tag | support | top heads (F1, lift) |"]
        lines.append("|---|---|---|")
        for row in rows:
            heads = ", ".join(
                f"{h['head']} ({_fmt(h['probe_f1'], 2)}, ×{h['lift']:.2f})" for h in row["heads"]
            )
            lines.append(f"| {_md_cell(row['tag'])} | {row['support']} | {heads} |")
        lines.append("")
    warnings = results.get("warnings", [])
    if warnings:
        lines += ["### Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    lines += ["## Figures", ""]
    for name, path in report.figures.items():
        caption = report.figure_captions.get(name, name)
        lines += [f"**{caption}**", "", f"![{caption}]({FIGURES_FOLDER}/{path.name})", ""]
    lines += [
        "## Stages",
        "",
        "| stage | seconds | from cache |",
        "|---|---|---|",
    ]
    for stage in results["stages"]:
        lines.append(
            f"| {stage['name']} | {stage['seconds']:.1f} | {'yes' if stage['cached'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


HTML_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
.headline{padding:.8em 1em;border-radius:6px;background:#fff3cd;border:1px solid #e0c068}
.headline.paper{background:#e6f4ea;border-color:#8cc79b}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.reproduced{color:#1a7f37;font-weight:600}.not-reproduced{color:#b42318;font-weight:600}
.not-comparable{color:#6b6b6b;font-weight:600}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555}code{background:#f5f5f5;padding:0 .2em}
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(report: Report) -> str:
    """The report as one HTML file: figures inline as data: URIs, no external resource."""
    results = report.results
    e = html.escape
    model, corpus, run = results["model"], results["corpus"], results["probes"]
    paper_class = " paper" if results["paper_weights"] else ""
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>headscope reproduce</title>",
        f"<style>{HTML_STYLE}</style></head><body>",
        f"<p class='headline{paper_class}'><strong>{e(report.headline)}</strong></p>",
        "<h1>headscope reproduce: attention heads with linguistic jobs</h1>",
        "<ul>",
        f"<li>model <code>{e(model['model_id'])}</code>, {model['n_layers']} layers × "
        f"{model['n_heads']} heads; weights sha256 <code>{e(model['weights_sha256'])}</code></li>",
        f"<li>corpus <code>{e(corpus['source'])}</code> ({corpus['sequences']} sequences)</li>",
        f"<li>probes: run <code>{e(run['run_id'])}</code>, {run['train_sequences']} + "
        f"{run['test_sequences']} sequences ({run['train_tokens']} / {run['test_tokens']} tokens)"
        "</li>",
        f"<li>corpus statistics over {results['config']['corpus_sequences']} sequences, 95% "
        "bootstrap intervals over sequences</li>",
        f"<li>{'quick mode: a smoke test, not a result' if results['quick'] else 'full run'}; "
        f"{results['run_seconds']:.1f} s</li>",
        "</ul>",
        "<h2>The paper's claims, side by side</h2>",
    ]
    rows = []
    for claim in report.claims:
        css = claim.verdict.replace(" ", "-")
        rows.append(
            [
                e(claim.section),
                e(claim.statement),
                e(claim.paper_text),
                e(_ours(claim)),
                e(_difference(claim)),
                f"<span class='{css}'>{e(claim.verdict)}</span><br><small>{e(claim.basis)}</small>",
            ]
        )
    parts.append(
        _html_table(["section", "claim", "paper", "ours [95% CI]", "difference", "verdict"], rows)
    )
    parts.append("<h2>Probe grids: paper vs. ours, per tag</h2>")
    parts.append(
        f"<p>Spearman ρ of F1 over every head; top 5 heads on each side; tags with at least "
        f"{MIN_SUPPORT} held-out tokens on both sides.</p>"
    )
    for vector, grid_rows in report.grids.items():
        parts.append(f"<h3>{e(vector)} probes</h3>")
        parts.append(
            _html_table(
                [
                    "tag",
                    "support (paper / ours)",
                    "Spearman ρ",
                    "paper top 5",
                    "our top 5",
                    "shared",
                ],
                [
                    [
                        e(row.tag),
                        f"{row.paper_support} / {row.our_support}",
                        e(_fmt(row.spearman)),
                        e(" ".join(row.paper_top)),
                        e(" ".join(row.our_top)),
                        str(row.shared_top),
                    ]
                    for row in grid_rows
                ],
            )
        )
    parts.append(f"<h2>Do these heads matter?</h2><p>{e(ABLATION_NOTE)}</p>")
    parts.append(
        _html_table(
            ABLATION_HEADER,
            [[e(cell) for cell in _ablation_cells(row)] for row in results.get("ablation", [])],
        )
    )
    parts.append(f"<h3>Where the case studies' heads stand</h3><p>{e(HEAD_SCORES_NOTE)}</p>")
    parts.append(
        _html_table(
            HEAD_SCORE_HEADER,
            [[e(c) for c in _head_score_cells(row)] for row in results.get("head_scores", [])],
        )
    )
    parts.append("<h2>Beyond the paper</h2><h3>Selectivity against the control task</h3>")
    parts.append(
        _html_table(
            ["head", "vector", "tag", "F1", "control F1", "selectivity"],
            [
                [
                    e(r["head"]),
                    e(r["vector"]),
                    e(r["tag"]),
                    f"{r['f1']:.3f}",
                    f"{r['control_f1']:.3f}",
                    f"{r['selectivity']:+.3f}",
                ]
                for r in results["selectivity"]
            ],
        )
    )
    parts.append(
        f"<h3>Heads ranked per tag</h3><p>Probe F1 and activity lift on the tag, combined (mean "
        f"of the two percentile ranks); tags with fewer than {MIN_SUPPORT} held-out tokens are "
        "never ranked.</p>"
    )
    for vector, ranked in results["rankings"].items():
        parts.append(f"<h4>{e(vector)} probes</h4>")
        parts.append(
            _html_table(
                ["tag", "support", "top heads (F1, lift)"],
                [
                    [
                        e(row["tag"]),
                        str(row["support"]),
                        e(
                            ", ".join(
                                f"{h['head']} ({_fmt(h['probe_f1'], 2)}, ×{h['lift']:.2f})"
                                for h in row["heads"]
                            )
                        ),
                    ]
                    for row in ranked
                ],
            )
        )
    if results.get("warnings"):
        parts.append("<h3>Warnings</h3><ul>")
        parts += [f"<li>{e(w)}</li>" for w in results["warnings"]]
        parts.append("</ul>")
    parts.append("<h2>Figures</h2>")
    for name, path in report.figures.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        caption = e(report.figure_captions.get(name, name))
        parts.append(
            f"<figure><img alt='{caption}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{caption}</figcaption></figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: Report, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "results": out / RESULTS_FILE,
        "markdown": out / MARKDOWN_FILE,
        "html": out / HTML_FILE,
    }
    written["results"].write_text(json.dumps(report.results, indent=1, default=_jsonable) + "\n")
    written["markdown"].write_text(markdown(report))
    written["html"].write_text(html_page(report))
    return written


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def probe_summary(run: ProbeRun) -> dict[str, Any]:
    split = run.manifest["split"]
    return {
        "run_id": run.run_id,
        "directory": str(run.directory),
        "train_sequences": len(split["train_sequences"]),
        "test_sequences": len(split["test_sequences"]),
        "train_tokens": split["train_tokens"],
        "test_tokens": split["test_tokens"],
        "support": run.manifest["metrics"]["support"],
        "majority_baseline": run.manifest["metrics"]["majority_baseline"],
        "summary": summary_rows(run.manifest),
    }
