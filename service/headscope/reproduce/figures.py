"""The report's figures, as PNG files: the paper's probe grids next to ours, the Appendix A/B
grids of our run, and the case-study charts and token figures drawn by headscope.analysis.figures
(the same code as GET /v1/figures/*.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headscope.analysis.figures import (
    DEFAULT_CHART_HEIGHT,
    activity_by_tag_png,
    attention_by_tag_png,
    draw_probe_grid,
    new_figure,
    png_bytes,
    probe_tags_png,
    quotes_png,
)
from headscope.analysis.probes.store import ProbeRun
from headscope.reproduce.reference import paper_reference
from headscope.schemas import (
    ActivityByTagResponse,
    AttentionByTagResponse,
    QuotesResponse,
)

CHART_WIDTH = 1000
# The case-study tags whose grids the report draws side by side with the paper's.
COMPARED_GRIDS = (("key", "``"), ("key", "''"), ("key", "VBD"), ("query", "PRP$"))


def paper_vs_ours_png(run: ProbeRun, model: str) -> bytes:
    """One row per case-study tag: the paper's F1 grid, then ours."""
    paper = paper_reference().vectors
    rows = [(v, t) for v, t in COMPARED_GRIDS if v in run.vectors]
    height = 260 * max(len(rows), 1) + 60
    figure = new_figure(1000, height)
    axes = figure.subplots(
        max(len(rows), 1),
        2,
        squeeze=False,
        gridspec_kw={"left": 0.06, "right": 0.98, "bottom": 45 / height, "top": 1 - 60 / height},
    )
    figure.subplots_adjust(hspace=0.5, wspace=0.15)
    for (vector, tag), (left, right) in zip(rows, axes, strict=False):
        theirs = paper[vector].f1_of(tag)
        if theirs is None:
            left.axis("off")
        else:
            draw_probe_grid(
                left,
                theirs,
                metric="f1",
                title=f"paper (TinyStories-1M): {vector} F1 of {tag} "
                f"(n={paper[vector].support.get(tag, 0)})",
                annotate=False,
            )
        if tag in run.tags:
            ours, support = run.scores(vector, tag, "f1")
            draw_probe_grid(
                right,
                ours,
                metric="f1",
                title=f"ours: {vector} F1 of {tag} (n={support})",
                annotate=False,
            )
        else:
            right.axis("off")
    figure.suptitle(f"Probe F1 per layer × head: the paper's vs. {model}", fontsize=11)
    return png_bytes(figure)


def write_figures(
    folder: Path,
    run: ProbeRun,
    quotes: dict,
    activity: dict[str, dict],
    attention: dict[str, dict],
    model: str,
) -> tuple[dict[str, Path], dict[str, str]]:
    """Every figure of the report; (name -> file, name -> caption)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    captions: dict[str, str] = {}

    def save(name: str, data: bytes, caption: str) -> None:
        path = folder / f"{name}.png"
        path.write_bytes(data)
        files[name], captions[name] = path, caption

    save(
        "probe-grids-paper-vs-ours",
        paper_vs_ours_png(run, model),
        "Probe F1 per head for the case-study tags: the paper's (left) and ours (right)",
    )
    for vector in ("key", "query"):
        if vector in run.vectors:
            save(
                f"appendix-{vector}-f1-all-tags",
                probe_tags_png(run, vector, "f1", model),
                f"Appendix {'A' if vector == 'key' else 'B'}: F1 of our {vector} probes, every "
                "tag, layer × head",
            )
    size: dict[str, Any] = {"width": CHART_WIDTH, "height": DEFAULT_CHART_HEIGHT, "model": model}
    save(
        "case1-quotes",
        quotes_png(QuotesResponse.model_validate(quotes), layer=None, top=16, **size),
        "Case study 1: activity inside vs. outside quotations and attention to the opening "
        "mark, top heads by ratio (bars: 95% bootstrap intervals)",
    )
    captions_by_key = {
        "before VBD": ("case2-activity-before-VBD", "Case study 2: activity just before VBD"),
        "on PRP$": ("case3-activity-on-PRPS", "Case study 3: activity on PRP$"),
        "on DT": ("case3-activity-on-DT", "Case study 3: activity on DT"),
    }
    for key, result in activity.items():
        name, caption = captions_by_key.get(key, (f"activity-{key}", key))
        save(
            name,
            activity_by_tag_png(
                ActivityByTagResponse.model_validate(result), layer=None, top=16, **size
            ),
            caption + ", top heads by lift (bars: 95% bootstrap intervals)",
        )
    for key, result in attention.items():
        name = "attention-" + key.replace(" ", "-").replace("$", "S")
        save(
            name,
            attention_by_tag_png(AttentionByTagResponse.model_validate(result), top=15, **size),
            f"Attention by tag: {key} (Appendix C/D; bars: 95% bootstrap intervals)",
        )
    return files, captions
