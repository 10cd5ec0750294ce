"""Corpus job throughput: tokens/s of the whole map (tag + forward + float64 statistics) and the
reduce, on the local engine (joblib processes) and on Ray (actors), at 1 and 2 workers.

    python bench/bench_jobs.py                                  # the sample's first 400 sequences
    python bench/bench_jobs.py --sequences 0 --repeat 10        # the sample x10 (~1.9M tokens)
    python bench/bench_jobs.py --configs local:1,local:2 --kinds activity-by-tag,quotes

Each configuration writes a fresh job; a worker's model load counts (it is part of a job), Ray's
own start does not (a cluster is already up when a job is submitted). Prints a table: tokens/s,
the ratio of 2 workers to 1, and Ray against local at the same worker count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HEADSCOPE_SHARED", REPO.parent / "shared"))
CORPUS = SHARED / "data" / "tinystories-valid-sample.txt"
MODEL = SHARED / "assets" / "standin-trained"
STATISTICS = "activity-by-tag,attention-by-tag,quotes"


def corpus_file(sequences: int, repeat: int, folder: Path) -> Path:
    from headscope.jobs.source import CorpusFile

    texts = []
    for text in CorpusFile.open(str(CORPUS)).sequences():
        texts.append(text)
        if sequences and len(texts) == sequences:
            break
    path = folder / "corpus.txt"
    with path.open("w") as file:
        for _ in range(repeat):
            file.write("\n\n".join(texts) + "\n\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=400, help="0: the whole sample")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--kinds", default=STATISTICS)
    parser.add_argument("--shard-sequences", type=int, default=50)
    parser.add_argument("--configs", default="local:1,local:2,ray:1,ray:2")
    args = parser.parse_args()
    os.environ.setdefault("NLTK_DATA", str(SHARED / "assets" / "nltk_data"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from headscope.jobs.run import JobSpec, WorkerConfig, connect_ray, reduce_shards, run_job

    configs = [(engine, int(n)) for engine, n in (c.split(":") for c in args.configs.split(","))]
    folder = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    rows = []
    try:
        corpus = corpus_file(args.sequences, args.repeat, folder)
        if any(engine == "ray" for engine, _ in configs):
            connect_ray(None, max(n for engine, n in configs if engine == "ray"))
        load = os.getloadavg()
        for engine, workers in configs:
            out = folder / f"{engine}-{workers}"
            spec = JobSpec(
                corpus=str(corpus),
                kinds=tuple(args.kinds.split(",")),
                out=out,
                worker=WorkerConfig(model=str(MODEL), torch_threads=1),
                shard_sequences=args.shard_sequences,
            )
            job = run_job(spec, engine=engine, workers=workers, progress=False)
            tick = time.perf_counter()
            reduce_shards(out)
            reduce_s = time.perf_counter() - tick
            run = job["last_run"]
            rows.append((engine, workers, job["tokens"], run["seconds"], reduce_s))
            print(f"{engine} x{workers}: {run['tokens_per_second']:,.0f} tokens/s", file=sys.stderr)
            shutil.rmtree(out)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    rate = {(engine, workers): tokens / seconds for engine, workers, tokens, seconds, _ in rows}
    print(f"kinds: {args.kinds}; {rows[0][2]:,} tokens; shards of {args.shard_sequences} sequences")
    print(
        f"cpus: {os.cpu_count()}; load average at start {load[0]:.1f}, at end {load_after[0]:.1f}"
    )
    print()
    print("| engine | workers | seconds | tokens/s | vs 1 worker | vs local | reduce s |")
    print("|---|---|---|---|---|---|---|")
    for engine, workers, tokens, seconds, reduce_s in rows:
        this = tokens / seconds
        one, local = rate.get((engine, 1)), rate.get(("local", workers))
        versus_one = f"{this / one:.2f}x" if one else "–"
        versus_local = f"{this / local:.2f}x" if local else "–"
        print(
            f"| {engine} | {workers} | {seconds:.1f} | {this:,.0f} | {versus_one} | "
            f"{versus_local} | {reduce_s:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
