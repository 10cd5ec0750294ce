"""`headscope reproduce`: the paper's study in one command, written as a report.

headscope reproduce                                  # TinyStories-1M and its validation split
headscope reproduce --model DIR --corpus stories.txt --out report/
headscope reproduce --quick                          # a few sequences: a smoke test
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from headscope.cli import add_settings_arguments, settings_from_args

REPRODUCE_SETTINGS = ["model", "tokenizer", "corpus", "max_tokens", "torch_threads", "log_level"]


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be a positive number")
    return number


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="Run the paper's study end to end and write a report.",
        description="Train key/query/value probes with the paper's protocol, run its three case "
        "studies and Appendix C/D over the corpus with bootstrap intervals, rank heads per tag, "
        "and compare every claim with the paper's published numbers. Writes OUT/index.html "
        "(self-contained), OUT/report.md, OUT/results.json and OUT/figures/. Finished stages are "
        "kept in OUT/stages and reused by the next run with the same model, corpus and options.",
    )
    add_settings_arguments(parser, REPRODUCE_SETTINGS)
    parser.add_argument(
        "--out", type=Path, default=Path("report"), help="Report folder (default: report/)."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="A few sequences for probes and statistics: checks the pipeline in under a minute; "
        "its numbers are not results.",
    )
    parser.add_argument(
        "--probe-sequences",
        type=_positive,
        default=None,
        help="Sequences per probe split (default 200, as the paper; 10 with --quick).",
    )
    parser.add_argument(
        "--corpus-sequences",
        type=_positive,
        default=None,
        help="Sequences behind each corpus statistic (default 100; 12 with --quick).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of splits and draws (0).")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from headscope.analysis.probes.pipeline import tqdm_progress
    from headscope.reproduce import StudyConfig, reproduce

    settings = settings_from_args(args, REPRODUCE_SETTINGS)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = StudyConfig.quick(args.seed) if args.quick else StudyConfig(seed=args.seed)
    overrides = {
        name: value
        for name, value in (
            ("probe_sequences", args.probe_sequences),
            ("corpus_sequences", args.corpus_sequences),
        )
        if value is not None
    }
    config = StudyConfig(**{**config.__dict__, **overrides})
    report, written = reproduce(
        settings, args.out, config, quick=args.quick, progress=tqdm_progress
    )
    print(report.headline)
    verdicts: dict[str, int] = {}
    for claim in report.claims:
        verdicts[claim.verdict] = verdicts.get(claim.verdict, 0) + 1
    print("claims: " + ", ".join(f"{count} {verdict}" for verdict, count in verdicts.items()))
    for path in written.values():
        print(f"wrote {path}")
    print(f"wrote {len(report.figures)} figures in {args.out / 'figures'}")
    return 0
