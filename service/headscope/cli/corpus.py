"""`headscope corpus run ...`: corpus statistics and probe features over a whole corpus, as a
map/reduce over shards of sequences on this machine or a Ray cluster.

headscope corpus run --corpus stories.txt --job activity-by-tag,quotes --out jobs/valid
headscope corpus run --corpus hub --job attention-by-tag --engine local --workers 2 --out jobs/a
headscope corpus run --corpus stories.txt --job probe-features --engine ray --workers 8 --out j/f
headscope corpus run ... --engine ray --address ray://head:10001     # an existing Ray cluster
headscope corpus run --corpus stories.txt --job ablation --ablation-mode mean --out jobs/abl
headscope corpus run ... --job ablation --ablation-heads 2.0,5.5 --out jobs/two  # (default: all)

Serve the results with `headscope serve --jobs-dir jobs` (GET /v1/corpus/jobs).

headscope corpus fit-probes --job jobs/f --store models_store     # a probe run from the shards
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from headscope.cli import add_settings_arguments, settings_from_args

RUN_SETTINGS = [
    "model",
    "tokenizer",
    "max_tokens",
    "torch_threads",
    "attention_kernel",
    "log_level",
]


def _kinds(value: str) -> tuple[str, ...]:
    from headscope.jobs.run import ALL_JOB_KINDS as JOB_KINDS

    kinds = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [kind for kind in kinds if kind not in JOB_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"choose from {','.join(JOB_KINDS)}; got {value!r}")
    return kinds


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def register(subparsers) -> None:
    corpus = subparsers.add_parser("corpus", help="Corpus jobs: statistics over a whole corpus.")
    commands = corpus.add_subparsers(dest="corpus_command", required=True)
    run_parser = commands.add_parser(
        "run",
        help="Map/reduce corpus statistics (and probe features) over shards of a corpus.",
        description="Read the corpus lazily in shards of sequences; tag each shard, run it "
        "through the model and write its float64 sums (and float16 probe features) to OUT; "
        "then add the sums up. A rerun into the same OUT resumes from the shards written.",
    )
    add_settings_arguments(run_parser, RUN_SETTINGS)
    run_parser.add_argument(
        "--corpus",
        required=True,
        help="A text file of stories separated by blank lines or <|endoftext|> lines, or 'hub' "
        "for the TinyStories validation split.",
    )
    run_parser.add_argument(
        "--job",
        dest="kinds",
        type=_kinds,
        default=("activity-by-tag", "attention-by-tag", "quotes"),
        help="Comma-separated: activity-by-tag, attention-by-tag, quotes, probe-features, "
        "ablation (default: the three statistics).",
    )
    run_parser.add_argument(
        "--ablation-mode",
        choices=("zero", "mean"),
        default="zero",
        help="--job ablation: replace each head's z by zeros, or by its mean over the corpus "
        "(default zero).",
    )
    run_parser.add_argument(
        "--ablation-heads",
        default=None,
        metavar="L.H,...",
        help="--job ablation: the heads to ablate, each alone, e.g. 2.0,5.5 (default: every "
        "head). Every next-token tag is counted.",
    )
    run_parser.add_argument("--engine", choices=("local", "ray"), default="local")
    run_parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: start Ray on 127.0.0.1)."
    )
    run_parser.add_argument("--workers", type=_positive, default=1, help="Worker processes.")
    run_parser.add_argument(
        "--shard-sequences", type=_positive, default=None, help="Sequences per shard (256)."
    )
    run_parser.add_argument("--out", type=Path, required=True, help="The job's folder.")
    run_parser.add_argument("--no-progress", action="store_true", help="No progress bar.")
    run_parser.set_defaults(handler=run)

    fit_parser = commands.add_parser(
        "fit-probes",
        help="Fit a probe run from a job's probe-features shards and save it in the store.",
        description="Split the job's sequences (seeded, whole sequences), fit one multinomial "
        "logistic regression (C=1) per head and vector by Newton's method as map/reduce over "
        "the shards, score it on the held-out split and save a normal probe run.",
    )
    add_settings_arguments(fit_parser, ["model", "tokenizer", "store", "log_level"])
    fit_parser.add_argument("--job", type=Path, required=True, help="The job's folder (--out).")
    fit_parser.add_argument("--out", type=Path, default=None, help="Run folder to create.")
    fit_parser.add_argument(
        "--vectors", default="key,query,value", help="Comma-separated: key, query, value."
    )
    fit_parser.add_argument(
        "--max-sequences",
        default="200",
        help="Sequences per split, or 'all' (default 200, the paper's protocol).",
    )
    fit_parser.add_argument("--seed", type=int, default=0)
    fit_parser.add_argument("--engine", choices=("local", "ray"), default="local")
    fit_parser.add_argument("--address", default=None, help="Ray cluster address.")
    fit_parser.add_argument("--workers", type=_positive, default=1)
    fit_parser.set_defaults(handler=fit_probes)


def run(args: argparse.Namespace) -> int:
    from headscope.jobs.ablation import ABLATION, AblationJob, parse_heads
    from headscope.jobs.run import DEFAULT_SHARD_SEQUENCES, JobSpec, WorkerConfig, describe, run_job

    settings = settings_from_args(args, RUN_SETTINGS)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Several workers share the cores: one torch thread each unless told otherwise.
    threads = settings.torch_threads or (1 if args.workers > 1 else None)
    spec = JobSpec(
        corpus=args.corpus,
        kinds=args.kinds,
        out=args.out,
        worker=WorkerConfig(
            model=settings.model,
            tokenizer=settings.tokenizer,
            max_tokens=settings.max_tokens,
            torch_threads=threads,
            attention_kernel=settings.attention_kernel,
        ),
        shard_sequences=args.shard_sequences or DEFAULT_SHARD_SEQUENCES,
        ablation=AblationJob(
            mode=args.ablation_mode,
            heads=parse_heads(args.ablation_heads) if args.ablation_heads else None,
        )
        if ABLATION in args.kinds
        else None,
    )
    job = run_job(
        spec,
        engine=args.engine,
        workers=args.workers,
        address=args.address,
        progress=not args.no_progress,
    )
    print(describe(job))
    return 0


def fit_probes(args: argparse.Namespace) -> int:
    from headscope.analysis.service import load_runtime
    from headscope.jobs.probe_fit import map_in_process, map_on_joblib, map_on_ray
    from headscope.jobs.probe_run import train_run_from_job
    from headscope.jobs.run import connect_ray

    settings = settings_from_args(args, ["model", "tokenizer", "store", "log_level"])
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.engine == "ray":
        connect_ray(args.address, args.workers)
        map_shards = map_on_ray()
    else:
        map_shards = map_on_joblib(args.workers) if args.workers > 1 else map_in_process
    max_sequences = None if args.max_sequences.lower() == "all" else int(args.max_sequences)
    runtime = load_runtime(settings.model_copy(update={"tagger_process": False}), load_probes=False)
    try:
        directory = train_run_from_job(
            runtime,
            args.job,
            store=settings.store,
            out=args.out,
            vectors=tuple(v.strip() for v in args.vectors.split(",") if v.strip()),
            seed=args.seed,
            max_sequences=max_sequences,
            map_shards=map_shards,
        )
    finally:
        runtime.close()
    print(directory)
    return 0
