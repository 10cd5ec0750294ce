"""The whole benchmark suite, one command: `python bench/run.py` (in .venv-bench, see README).

Prints markdown tables: analysis throughput against HF, TransformerLens 4 and the paper's
per-head loop; HTTP latency, throughput, startup and RSS of a real `headscope serve`; corpus
endpoints; probe training (bench/bench_probes.py, when present). Results also go to
bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import bench_engine
import bench_http
import common


def main() -> None:
    parser = argparse.ArgumentParser(description="Run every headscope benchmark.")
    parser.add_argument(
        "--threads",
        default="1",
        help="torch threads for the throughput table; comma-separated runs each (e.g. 1,2)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer sequences and requests")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-probes", action="store_true")
    args = parser.parse_args()

    common.RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started = time.perf_counter()
    print(f"## headscope benchmarks ({stamp})\n")
    print(f"Machine: {common.machine_description()}")
    print(
        f"Weights: {common.STANDIN_DIR} (trained stand-in with TinyStories-1M's architecture, "
        "not TinyStories-1M itself). Texts: "
        f"{common.CORPUS.name}. Command: python bench/run.py {' '.join(sys.argv[1:])}"
    )
    results: dict = {"machine": common.machine_description()}

    for threads in (int(value) for value in args.threads.split(",")):
        engine_args = ["--threads", str(threads)]
        if args.quick:
            engine_args += ["--sequences", "16", "--repeats", "1", "--paper-subset", "1"]
        results[f"throughput threads={threads}"] = bench_engine.main(engine_args)

    if not args.skip_http:
        results["http"] = bench_http.main(["--quick"] if args.quick else [])

    probes_script = common.REPO / "bench" / "bench_probes.py"
    if not args.skip_probes:
        if probes_script.is_file():
            print("\n### Probe training (bench/bench_probes.py)\n")
            # The sklearn loop over all 384 probes takes minutes: time it on a subset and let the
            # script extrapolate (its table says so).
            sklearn_probes = "16" if args.quick else "48"
            completed = subprocess.run(
                [sys.executable, str(probes_script), "--sklearn-probes", sklearn_probes],
                capture_output=True,
                text=True,
            )
            print(completed.stdout)
            if completed.returncode != 0:
                print(f"bench_probes.py exited {completed.returncode}: {completed.stderr[-2000:]}")
            results["probes"] = {"stdout": completed.stdout, "returncode": completed.returncode}
        else:
            print("\n(bench/bench_probes.py not present: probe training not measured.)")

    print(f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s")
    print(f"Machine at the end: {common.machine_description()}")
    path = common.RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"Results: {path}")


if __name__ == "__main__":
    main()
