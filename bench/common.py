"""Shared pieces of the benchmarks: paths to ../shared, the texts, timing, markdown tables.

Every benchmark uses the same weights (the trained stand-in in ../shared, which has
TinyStories-1M's exact architecture but is NOT TinyStories-1M) and the same texts (the shared
TinyStories validation sample).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HEADSCOPE_SHARED", REPO.parent / "shared")).resolve()
STANDIN_DIR = SHARED / "assets" / "standin-trained"
NLTK_DATA = SHARED / "assets" / "nltk_data"
CORPUS = SHARED / "data" / "tinystories-valid-sample.txt"
RESULTS = REPO / "bench" / "results"

# Offline, and pointed at ../shared, before anything imports nltk or transformers.
os.environ.setdefault("NLTK_DATA", str(NLTK_DATA))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HEADSCOPE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(STANDIN_DIR)


def story_sequences(count: int, min_tokens: int = 128, max_tokens: int = 512) -> list[list[int]]:
    """`count` sequences of consecutive paragraphs of the sample, each joined until it has at
    least `min_tokens` tokens (cut at `max_tokens`), as ids: natural, mixed lengths, as a
    corpus run would see them."""
    tok = tokenizer()
    sequences: list[list[int]] = []
    text = ""
    for paragraph in CORPUS.read_text().split("\n\n"):
        text = f"{text}\n\n{paragraph.strip()}" if text else paragraph.strip()
        ids = tok(text).input_ids
        if len(ids) >= min_tokens:
            sequences.append(ids[:max_tokens])
            text = ""
            if len(sequences) == count:
                return sequences
    raise RuntimeError(f"the sample makes fewer than {count} sequences of {min_tokens}+ tokens")


def window_texts(length: int, count: int, stride: int | None = None) -> list[str]:
    """`count` distinct texts of exactly `length` tokens: windows over the sample, decoded, kept
    only where re-encoding gives the same `length` tokens."""
    tok = tokenizer()
    ids = tok(CORPUS.read_text()).input_ids
    stride = stride or max(1, length // 2)
    texts: list[str] = []
    for start in range(0, len(ids) - length, stride):
        text = tok.decode(ids[start : start + length])
        if text.strip() and len(tok(text).input_ids) == length:
            texts.append(text)
            if len(texts) == count:
                return texts
    raise RuntimeError(f"only {len(texts)} windows of {length} tokens")


def best_of(function: Callable[[], object], repeats: int = 3) -> float:
    """Fastest of `repeats` timed runs, seconds (after one warm-up run).

    The fastest run is the least disturbed by whatever else the shared box is doing."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "n/a"
            return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | None, results: object) -> None:
    """`results` as indented JSON to `path` (a benchmark's --json), when one is given."""
    if path:
        Path(path).write_text(json.dumps(results, indent=2, default=str))


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        load = " load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = ""
    import torch

    return (
        f"{cpu}, nproc={os.cpu_count()}, Python {sys.version.split()[0]}, torch {torch.__version__}"
        f";{load}"
    )
