"""`headscope probes ...`: train probe runs, inspect them, and draw their F1 heatmaps.

headscope probes train --model DIR --corpus stories.txt            # -> models_store/<run_id>
headscope probes train --max-sequences 200 --vectors key,value --out runs/kv
headscope probes show models_store/<run_id>
headscope probes plot models_store/<run_id> --vector key --tag VBD --out vbd.png
headscope probes plot models_store/<run_id> --all-tags --out figures/   # one grid per vector
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from headscope.analysis.bootstrap import MIN_SUPPORT_TOKENS as MIN_SUPPORT
from headscope.cli import add_settings_arguments, settings_from_args
from headscope.errors import HeadscopeError

TRAIN_SETTINGS = [
    "model",
    "tokenizer",
    "corpus",
    "store",
    "max_tokens",
    "torch_threads",
    "log_level",
]
TAG_NAMES = {"``": "open-quote", "''": "close-quote", ",": "comma", ".": "period", ":": "colon"}


def _max_sequences(value: str) -> int | None:
    if value.lower() in ("all", "none", "0"):
        return None
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be a positive number or 'all'")
    return number


def _vectors(value: str) -> tuple[str, ...]:
    from headscope.model.probe_features import VECTORS

    vectors = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [v for v in vectors if v not in VECTORS]
    if unknown or not vectors:
        raise argparse.ArgumentTypeError(f"choose from {','.join(VECTORS)}; got {value!r}")
    return vectors


def _test_size(value: str) -> float:
    number = float(value)
    if not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return number


def register(subparsers) -> None:
    probes = subparsers.add_parser("probes", help="Train, inspect and plot POS probes.")
    commands = probes.add_subparsers(dest="probes_command", required=True)

    train_parser = commands.add_parser(
        "train",
        help="Train one probe per (layer, head, vector) and save a run in the store.",
        description="Tag the corpus, split it by sequence, extract every head's key/query/value "
        "vectors, fit a multinomial logistic regression (C=1) per head and vector, evaluate it "
        "on the held-out split (with the majority and control-task baselines) and save the run.",
    )
    add_settings_arguments(train_parser, TRAIN_SETTINGS)
    train_parser.add_argument(
        "--out", type=Path, default=None, help="Run folder to create (default: STORE/<run_id>)."
    )
    train_parser.add_argument(
        "--max-sequences",
        type=_max_sequences,
        default=200,
        help="Sequences per split, train and test each (default 200, as the paper; 'all').",
    )
    train_parser.add_argument("--seed", type=int, default=0, help="Split and control seed (0).")
    train_parser.add_argument(
        "--test-size", type=_test_size, default=0.2, help="Held-out fraction (default 0.2)."
    )
    train_parser.add_argument(
        "--vectors",
        type=_vectors,
        default=("key", "query", "value"),
        help="Comma-separated vectors to probe (default key,query,value).",
    )
    train_parser.add_argument(
        "--include-none",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Keep whitespace-only tokens as class NONE (default: drop them).",
    )
    train_parser.add_argument(
        "--method",
        choices=("fast", "sklearn"),
        default="fast",
        help="fast: batched Newton in torch (default); sklearn: the paper's loop of "
        "LogisticRegression fits (same objective, much slower).",
    )
    train_parser.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also train control-task probes for selectivity (default: on).",
    )
    train_parser.add_argument(
        "--tol", type=float, default=1e-4, help="Stop at max|gradient| <= tol (1e-4, sklearn's)."
    )
    train_parser.add_argument(
        "--max-iter", type=int, default=None, help="Most iterations (fast 100, sklearn 1000)."
    )
    train_parser.add_argument(
        "--batch-size", type=int, default=32, help="Sequences per forward pass (32)."
    )
    train_parser.set_defaults(handler=train)

    show_parser = commands.add_parser("show", help="Verify a run and print its summary.")
    show_parser.add_argument("run", type=Path, help="The run folder.")
    show_parser.add_argument("--top", type=int, default=5, help="Heads listed per tag (default 5).")
    show_parser.set_defaults(handler=show)

    plot_parser = commands.add_parser(
        "plot",
        help="Heatmap of a metric per layer and head (the paper's Appendix A/B figures).",
    )
    plot_parser.add_argument("run", type=Path, help="The run folder.")
    plot_parser.add_argument("--vector", choices=("key", "query", "value"), default=None)
    plot_parser.add_argument(
        "--tag", default=None, help="A tag of the run, or accuracy / macro / weighted."
    )
    plot_parser.add_argument(
        "--metric", choices=("f1", "precision", "recall", "selectivity"), default="f1"
    )
    plot_parser.add_argument(
        "--all-tags",
        action="store_true",
        help="One grid figure per vector with a heatmap per tag; --out is then a folder.",
    )
    plot_parser.add_argument(
        "--out", "-o", type=Path, default=None, help="PNG file (or folder with --all-tags)."
    )
    plot_parser.add_argument("--force", action="store_true", help="Overwrite PNG files that exist.")
    plot_parser.set_defaults(handler=plot)


def train(args: argparse.Namespace) -> int:
    from headscope.analysis.corpus_text import load_corpus
    from headscope.analysis.probes.pipeline import (
        TrainConfig,
        summary_table,
        tqdm_progress,
        train_probe_run,
    )
    from headscope.analysis.service import load_runtime

    settings = settings_from_args(args, TRAIN_SETTINGS)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = TrainConfig(
        vectors=args.vectors,
        seed=args.seed,
        test_size=args.test_size,
        max_sequences=args.max_sequences,
        include_none=args.include_none,
        method=args.method,
        control=args.control,
        tol=args.tol,
        max_iter=args.max_iter,
        batch_size=args.batch_size,
    )
    corpus = load_corpus(settings.corpus)
    runtime = load_runtime(settings, load_probes=False)
    try:
        trained = train_probe_run(
            runtime, corpus, config, store=settings.store, out=args.out, progress=tqdm_progress
        )
    except (ValueError, FileExistsError) as err:
        print(f"headscope probes train: error: {err}", file=sys.stderr)
        return 2
    print(summary_table(trained.manifest))
    timings = ", ".join(f"{name} {seconds:.1f}" for name, seconds in trained.timings.items())
    print(f"\ntimings (s): {timings}")
    print(f"saved: {trained.directory}")
    return 0


def show(args: argparse.Namespace) -> int:
    from headscope.analysis.probes.pipeline import summary_table
    from headscope.analysis.probes.store import load_probe_run

    run = load_probe_run(args.run, expected_fingerprint=None)
    manifest = run.manifest
    print(summary_table(manifest))
    print(
        f"\nmodel {manifest['model']['id']} (weights sha256 {run.model_fingerprint[:12]}…), "
        f"corpus {manifest['corpus']['source']}, method {manifest['probe']['method']}; "
        f"artifacts verified: {', '.join(manifest['artifacts'])}"
    )
    print()
    print(top_heads_table(run, args.top))
    return 0


def top_heads_table(run, top: int) -> str:
    """Per vector, the `top` heads by held-out F1 for every tag with enough support; the tags
    with too few held-out tokens are named, never ranked."""
    import numpy as np

    support = run.manifest["metrics"]["support"]
    ranked = [tag for tag in run.tags if support.get(tag, 0) >= MIN_SUPPORT]
    skipped = [tag for tag in run.tags if support.get(tag, 0) < MIN_SUPPORT]
    lines = [f"top {top} heads per tag by held-out F1 (tags with >= {MIN_SUPPORT} test tokens):"]
    width = max((len(tag) for tag in ranked), default=3)
    for vector in run.vectors:
        lines.append(f"  {vector}")
        for tag in ranked:
            grid, n = run.scores(vector, tag, "f1")
            n_heads = grid.shape[1]
            order = np.argsort(-np.nan_to_num(grid.ravel(), nan=-1.0), kind="stable")[:top]
            heads = ", ".join(f"L{i // n_heads}H{i % n_heads} {grid.ravel()[i]:.2f}" for i in order)
            lines.append(f"    {tag:<{width}} (n={n:>5}): {heads}")
    if skipped:
        lines.append(f"  not ranked (fewer than {MIN_SUPPORT} test tokens): {' '.join(skipped)}")
    return "\n".join(lines)


def _slug(tag: str) -> str:
    return TAG_NAMES.get(tag) or re.sub(r"[^A-Za-z0-9]", lambda m: "S" if m[0] == "$" else "-", tag)


def plot(args: argparse.Namespace) -> int:
    from headscope.analysis.figures import model_label, probe_heatmap_png, probe_tags_png
    from headscope.analysis.probes.store import load_probe_run

    run = load_probe_run(args.run, expected_fingerprint=None)
    model = model_label(run.manifest["model"]["id"])
    figures: list[tuple[Path, Callable[[], bytes]]] = []
    if args.all_tags:
        folder = args.out or Path(".")
        for vector in [args.vector] if args.vector else run.vectors:
            path = folder / f"{run.run_id}-{vector}-{args.metric}-all-tags.png"
            figures.append((path, partial(probe_tags_png, run, vector, args.metric, model)))
    else:
        vector, tag = args.vector or "key", args.tag or "macro"
        path = args.out or Path(f"{run.run_id}-{vector}-{_slug(tag)}-{args.metric}.png")
        figures.append((path, partial(probe_heatmap_png, run, vector, tag, args.metric, model)))
    existing = [str(path) for path, _ in figures if path.exists()]
    if existing and not args.force:
        print(
            f"headscope probes plot: error: {', '.join(existing)} exists; pass --force to "
            "overwrite, or --out elsewhere",
            file=sys.stderr,
        )
        return 2
    for path, draw in figures:
        try:
            data = draw()
        except HeadscopeError as err:
            print(f"headscope probes plot: error: {err.message}", file=sys.stderr)
            return 2
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {path}")
    return 0
