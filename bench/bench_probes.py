"""Probe training: the paper's sklearn loop vs headscope's batched fast path, same split, same
features, same objective. Prints a markdown table: wall time of each and the macro-F1
difference per probe.

    python bench/bench_probes.py                        # 200 + 200 sequences, all 384 probes
    python bench/bench_probes.py --sklearn-probes 48    # time sklearn on 48 probes, extrapolate

Defaults read ../shared (the trained stand-in model and the TinyStories sample), offline. The
sklearn loop over 384 probes takes minutes; with --sklearn-probes the table says plainly which
figures are extrapolated.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HEADSCOPE_SHARED", REPO.parent / "shared")).resolve()
os.environ.setdefault("NLTK_DATA", str(SHARED / "assets" / "nltk_data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HEADSCOPE_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from headscope.analysis.corpus_text import load_corpus  # noqa: E402
from headscope.analysis.probes.metrics import classification_report  # noqa: E402
from headscope.analysis.service import load_runtime  # noqa: E402
from headscope.model.probe_features import build_token_set, split_by_sequence  # noqa: E402
from headscope.model.probe_fit import fit_batched, fit_sklearn, predict_classes  # noqa: E402
from headscope.settings import Settings  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default=os.environ.get("HEADSCOPE_MODEL", str(SHARED / "assets" / "standin-trained")),
    )
    parser.add_argument(
        "--corpus",
        default=os.environ.get(
            "HEADSCOPE_CORPUS", str(SHARED / "data" / "tinystories-valid-sample.txt")
        ),
    )
    parser.add_argument("--max-sequences", type=int, default=200, help="Per split (200).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vectors", default="key,query,value")
    parser.add_argument(
        "--threads", type=int, default=1, help="Threads for torch and for sklearn/BLAS alike (1)."
    )
    parser.add_argument(
        "--sklearn-probes",
        type=int,
        default=None,
        help="Fit sklearn on this many probes (spread over layers and heads) and extrapolate its "
        "time to all; default: all probes.",
    )
    return parser.parse_args()


def macro_f1(y_true: np.ndarray, predicted: np.ndarray, n_labels: int) -> np.ndarray:
    return classification_report(y_true, predicted, n_labels).macro["f1"]


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    vectors = [v.strip() for v in args.vectors.split(",") if v.strip()]
    runtime = load_runtime(
        Settings(model=args.model, torch_threads=args.threads), load_probes=False
    )
    corpus = load_corpus(args.corpus)
    split = split_by_sequence(
        len(corpus.sequences), seed=args.seed, test_size=0.2, max_sequences=args.max_sequences
    )
    tick = time.perf_counter()
    train = build_token_set(runtime, corpus.sequences, split.train, vectors, include_none=False)
    test = build_token_set(runtime, corpus.sequences, split.test, vectors, include_none=False)
    prepare_s = time.perf_counter() - tick

    classes = sorted(set(train.tags.tolist()))
    labels = classes + sorted(set(test.tags.tolist()) - set(classes))
    index = {tag: i for i, tag in enumerate(labels)}
    y_train = np.array([index[t] for t in train.tags.tolist()])
    y_test = np.array([index[t] for t in test.tags.tolist()])
    g = runtime.geometry
    n_per_vector = g.n_layers * g.n_heads
    n_probes = n_per_vector * len(vectors)
    subset_size = min(args.sklearn_probes or n_probes, n_probes)
    # Spread the sklearn subset evenly over all probes (every layer, head and vector).
    subset = np.unique(np.linspace(0, n_probes - 1, subset_size).round().astype(int))

    fast_s = sklearn_s = 0.0
    fast_f1 = np.zeros(n_probes)
    sklearn_f1 = np.full(n_probes, np.nan)
    not_converged = {"fast": 0, "sklearn": 0}
    for number, vector in enumerate(vectors):
        x_train = train.features[vector].reshape(n_per_vector, len(train), g.d_head)
        x_test = test.features[vector].reshape(n_per_vector, len(test), g.d_head)
        offset = number * n_per_vector
        tick = time.perf_counter()
        fast = fit_batched(x_train, y_train, len(classes))
        fast_s += time.perf_counter() - tick
        not_converged["fast"] += int((~fast.converged).sum())
        predicted = predict_classes(x_test, fast.coef, fast.intercept)
        fast_f1[offset : offset + n_per_vector] = macro_f1(y_test, predicted, len(labels))

        mine = subset[(subset >= offset) & (subset < offset + n_per_vector)] - offset
        if len(mine):
            tick = time.perf_counter()
            with threadpool_limits(args.threads):
                slow = fit_sklearn(x_train[mine], y_train, len(classes))
            sklearn_s += time.perf_counter() - tick
            not_converged["sklearn"] += int((~slow.converged).sum())
            predicted = predict_classes(x_test[mine], slow.coef, slow.intercept)
            sklearn_f1[offset + mine] = macro_f1(y_test, predicted, len(labels))
        print(f"{vector}: fast {fast_s:.1f} s, sklearn {sklearn_s:.1f} s so far", file=sys.stderr)

    extrapolated = len(subset) < n_probes
    sklearn_all_s = sklearn_s * n_probes / len(subset)
    both = ~np.isnan(sklearn_f1)
    difference = np.abs(fast_f1[both] - sklearn_f1[both])
    sklearn_time = (
        f"{sklearn_all_s:.1f} (extrapolated from {sklearn_s:.1f} s on {len(subset)} probes)"
        if extrapolated
        else f"{sklearn_s:.1f}"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nProbe training, {args.model}: {len(split.train)} + {len(split.test)} sequences "
        f"(seed {args.seed}), {len(train)} train / {len(test)} test tokens, {len(classes)} "
        f"classes, {n_probes} probes ({', '.join(vectors)}); {args.threads} thread(s) each; "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the end; "
        f"torch {torch.__version__}, Python {platform.python_version()}. "
        f"Tagging + extraction (shared by both): {prepare_s:.1f} s.\n"
    )
    print("| | sklearn loop (paper) | fast path (batched Newton, torch) |")
    print("|---|---|---|")
    print(f"| probes timed | {len(subset)}{' (subset)' if extrapolated else ''} | {n_probes} |")
    print(f"| wall time for {n_probes} probes (s) | {sklearn_time} | {fast_s:.1f} |")
    print(
        f"| per probe (ms) | {1000 * sklearn_s / len(subset):.0f} | "
        f"{1000 * fast_s / n_probes:.0f} |"
    )
    print(f"| speed-up | 1x | {sklearn_all_s / fast_s:.1f}x |")
    print(
        f"| mean held-out macro-F1 (probes fitted by both) | {sklearn_f1[both].mean():.4f} | "
        f"{fast_f1[both].mean():.4f} |"
    )
    print(
        f"| abs macro-F1 difference, mean / max over {int(both.sum())} probes | "
        f"{difference.mean():.4f} / {difference.max():.4f} | |"
    )
    print(f"| probes stopped before tol | {not_converged['sklearn']} | {not_converged['fast']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
