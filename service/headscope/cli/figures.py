"""`headscope figures ...`: write the case-study figures as PNG files, without a server.

    headscope figures activity --text "..." --layer 1 --head 3 -o activity.png
    headscope figures attention --text "..." --layer 1 --head 3 --query 12
    headscope figures attention-by-tag --layer 1 --head 3 --from-tag VBD --n-sequences 200
    headscope figures activity-by-tag --tag VBD --position before
    headscope figures quotes --texts-file stories.txt

The same figures as GET /v1/figures/*.png, drawn by the same code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import BaseModel, ValidationError

from headscope.cli import add_settings_arguments, settings_from_args
from headscope.errors import HeadscopeError
from headscope.schemas import (
    ActivityByTagFigureQuery,
    ActivityFigureQuery,
    AttentionByTagFigureQuery,
    AttentionFigureQuery,
    QuotesFigureQuery,
)

FIGURE_SETTINGS = [
    "model",
    "tokenizer",
    "corpus",
    "max_tokens",
    "torch_threads",
    "corpus_max_sequences",
    "corpus_max_tokens",
    "log_level",
]

# figure name -> (query model, Figures method, help)
FIGURES: dict[str, tuple[type[BaseModel], str, str]] = {
    "activity": (ActivityFigureQuery, "activity", "A text shaded by one head's activity."),
    "attention": (
        AttentionFigureQuery,
        "attention",
        "A text shaded by one query token's attention row.",
    ),
    "attention-by-tag": (
        AttentionByTagFigureQuery,
        "attention_by_tag",
        "Bar chart: attention of one head by POS tag, over many sequences.",
    ),
    "activity-by-tag": (
        ActivityByTagFigureQuery,
        "activity_by_tag",
        "Bar chart: heads' activity on/before/after a POS tag vs. overall.",
    ),
    "quotes": (
        QuotesFigureQuery,
        "quotes",
        "Bar charts: heads' activity inside vs. outside quotations, attention to the opening.",
    ),
}


def _add_text_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="The text to draw.")
    source.add_argument("--text-file", type=Path, help="Read the text from this UTF-8 file.")


def _add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--texts-file",
        type=Path,
        help="Analyse the sequences of this UTF-8 file (separated by blank lines or "
        "<|endoftext|> lines) instead of drawing from the corpus.",
    )
    source.add_argument(
        "--n-sequences", type=int, help="Sequences to draw from --corpus (default 100)."
    )
    parser.add_argument("--seed", type=int, help="Seed of the draw (default 0).")


def _add_head_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layer", type=int, required=True, help="Layer, from 0.")
    parser.add_argument("--head", type=int, required=True, help="Head within the layer, from 0.")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "figures",
        help="Write the case-study figures as PNG files.",
        description="Draw the paper's case-study figures for any head and text as PNG files.",
    )
    kinds = parser.add_subparsers(dest="figure", required=True)
    for name, (_, _, help_text) in FIGURES.items():
        sub = kinds.add_parser(name, help=help_text, description=help_text)
        if name in ("activity", "attention"):
            _add_text_arguments(sub)
            _add_head_arguments(sub)
        if name == "activity":
            sub.add_argument(
                "--bold-fraction",
                type=float,
                help="Bold tokens with at least this fraction of the max activity (default 0.5).",
            )
        elif name == "attention":
            sub.add_argument("--query", type=int, help="Query token (default: the last).")
        elif name == "attention-by-tag":
            _add_head_arguments(sub)
            direction = sub.add_mutually_exclusive_group(required=True)
            direction.add_argument("--from-tag", help="Where tokens with this tag attend.")
            direction.add_argument("--to-tag", help="Which tags attend to this tag.")
            sub.add_argument("--top", type=int, help="Bars for at most this many tags.")
        elif name == "activity-by-tag":
            sub.add_argument("--tag", required=True, help="Penn Treebank tag, e.g. VBD.")
            sub.add_argument("--position", choices=["on", "before", "after"], help="Default: on.")
        if name in ("activity-by-tag", "quotes"):
            sub.add_argument("--layer", type=int, help="Draw this layer's heads (default: top).")
            sub.add_argument("--top", type=int, help="Heads drawn without --layer (default 16).")
        if name in ("attention-by-tag", "activity-by-tag", "quotes"):
            _add_corpus_arguments(sub)
        sub.add_argument("-o", "--output", type=Path, help="PNG file to write.")
        sub.add_argument(
            "--force", action="store_true", help="Overwrite the PNG file if it exists."
        )
        sub.add_argument("--width", type=int, help="Width in pixels (default 1000).")
        sub.add_argument("--height", type=int, help="Height in pixels (default: fit/500).")
        add_settings_arguments(sub, FIGURE_SETTINGS)
        sub.set_defaults(handler=write_figure)


def _fail(message: str) -> int:
    print(f"headscope figures: error: {message}", file=sys.stderr)
    return 2


def build_query(args: argparse.Namespace) -> BaseModel:
    query_type = FIGURES[args.figure][0]
    values = {
        name: getattr(args, name)
        for name in query_type.model_fields
        if getattr(args, name, None) is not None
    }
    if getattr(args, "text_file", None) is not None:
        values["text"] = args.text_file.read_text(encoding="utf-8")
    if getattr(args, "texts_file", None) is not None:
        from headscope.analysis.corpus_text import split_sequences

        values["texts"] = split_sequences(args.texts_file.read_text(encoding="utf-8"))
    return query_type(**values)


def default_output(args: argparse.Namespace) -> Path:
    if args.figure in ("activity", "attention", "attention-by-tag"):
        return Path(f"{args.figure}-L{args.layer}H{args.head}.png")
    if args.figure == "activity-by-tag":
        return Path(f"activity-{args.position or 'on'}-{args.tag}.png")
    return Path(f"{args.figure}.png")


def write_figure(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, FIGURE_SETTINGS)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        query = build_query(args)
    except OSError as err:
        return _fail(f"cannot read {err.filename}: {err.strerror}")
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}"
            for e in err.errors(include_url=False)
        )
        return _fail(f"invalid option: {problems}")

    output = args.output or default_output(args)
    if output.exists() and not args.force:
        return _fail(f"{output} exists; pass --force to overwrite it, or -o another file")

    from headscope.analysis.corpus import CorpusAnalysis
    from headscope.analysis.figures import Figures
    from headscope.analysis.service import load_runtime

    # Figures need no probes; a corrupt probe run must not stop them.
    runtime = load_runtime(settings, load_probes=False)
    figures = Figures(runtime, CorpusAnalysis(runtime, settings))
    try:
        data = getattr(figures, FIGURES[args.figure][1])(query)
    except HeadscopeError as err:
        return _fail(err.message)
    try:
        output.write_bytes(data)
    except OSError as err:
        return _fail(f"cannot write {output}: {err.strerror}")
    print(f"wrote {output}")
    return 0
