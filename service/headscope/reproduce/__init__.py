"""`headscope reproduce`: the paper's study end to end, written as a report.

    load the model (no probes) -> train probes (paper's protocol) -> case studies 1-3 and
    Appendix C/D over the corpus, with bootstrap intervals -> rank heads per tag -> compare
    with the paper's published numbers -> report/ (index.html, report.md, results.json, figures/)

Stages are cached in <out>/stages and resumed (headscope.reproduce.study); the comparison rules
live in headscope.reproduce.compare, the paper's numbers in paper_reference.json.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from headscope.reproduce.report import (
    FIGURES_FOLDER,
    Report,
    ablation_rows,
    build_claims,
    grid_comparisons,
    head_score_rows,
    headline,
    is_paper_model,
    probe_summary,
    ranking_rows,
    selectivity_rows,
    write_report,
)
from headscope.reproduce.study import Study, StudyConfig
from headscope.settings import Settings

__all__ = ["Report", "StudyConfig", "reproduce"]

log = logging.getLogger("headscope.reproduce")


def reproduce(
    settings: Settings, out: Path, config: StudyConfig, *, quick: bool = False, progress=None
) -> tuple[Report, dict[str, Path]]:
    """Run (or resume) the study into `out` and write the report; (report, files written)."""
    from headscope.analysis.corpus import CorpusAnalysis
    from headscope.analysis.corpus_text import load_corpus
    from headscope.analysis.figures import model_label
    from headscope.analysis.service import load_runtime
    from headscope.model.probe_features import no_progress
    from headscope.reproduce.figures import write_figures
    from headscope.reproduce.reference import paper_reference

    started = time.monotonic()
    corpus = load_corpus(settings.corpus)
    runtime = load_runtime(settings, load_probes=False)
    try:
        analysis = CorpusAnalysis(runtime, settings)
        study = Study(runtime, analysis, corpus, config, out, progress=progress or no_progress)
        run = study.probes()
        quotes = study.quotes()
        activity = study.activity()
        attention = study.attention()
        ranking = study.ranking()
        ablation = study.ablation()
        head_scores = study.head_scores()
        info = runtime.info().model_dump(mode="json")
    finally:
        runtime.close()

    comparable = is_paper_model(info["model_id"])
    figures, captions = write_figures(
        out / FIGURES_FOLDER, run, quotes, activity, attention, model_label(info["model_id"])
    )
    claims = build_claims(run, quotes, activity, attention, comparable)
    grids = grid_comparisons(run)
    statistics = [quotes, *activity.values(), *attention.values(), *ablation.values()]
    warnings = sorted({s["warning"] for s in statistics if s.get("warning")})
    reference = paper_reference()
    results: dict[str, Any] = {
        "headline": headline(info["model_id"], info["weights_sha256"]),
        "paper_weights": comparable,
        "quick": quick,
        "model": info,
        "corpus": {
            "source": corpus.source,
            "sha256": corpus.sha256,
            "sequences": len(corpus.sequences),
        },
        "config": asdict(config),
        "probes": probe_summary(run),
        "claims": [claim.as_dict() for claim in claims],
        "grid_comparison": {v: [row.as_dict() for row in rows] for v, rows in grids.items()},
        "selectivity": selectivity_rows(run),
        "rankings": ranking_rows(ranking),
        "ablation": ablation_rows(ablation),
        "head_scores": head_score_rows(head_scores),
        "warnings": warnings,
        "statistics": {
            "quotes": quotes,
            "activity": activity,
            "attention": attention,
            "ablation": ablation,
            "head_scores": head_scores,
        },
        "reference": {"about": reference.about, "provenance": reference.provenance},
        "stages": [asdict(record) for record in study.records],
        "run_seconds": time.monotonic() - started,
    }
    report = Report(results["headline"], results, claims, grids, figures, captions)
    written = write_report(report, out)
    return report, written
