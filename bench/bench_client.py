"""The Python client against a real `headscope serve` on 127.0.0.1 (the trained stand-in).

1. One 512-token POST /v1/analyze with all 128 patterns, end to end through the client
   (request, answer, parse, `to_numpy()` of the activity and `patterns_to_numpy()`): JSON vs
   safetensors (float32, and float16), answer bytes and time. "fresh" rows analyse a text the
   server has not seen; "cached" rows repeat one (the server only encodes).
2. `analyze_many` over distinct 128-token texts at concurrency 1 and 8, JSON and safetensors,
   beside a plain loop of `Client.analyze` and beside the server's own 8-client throughput as
   `bench_http.py` measures it (its raw keep-alive load generator, measured before and after).

Every text is analysed once per row (distinct windows of the sample), so the analysis cache
never answers a batch row. The client runs in this process, on the same cores as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence

import common
import httpx
import psutil
from bench_http import load, server

from headscope_client import AsyncClient, Client, HeadscopeError

ALL_HEADS = [(layer, head) for layer in range(8) for head in range(16)]
REPEATS = 3


class SizeRecorder(httpx.HTTPTransport):
    """The loopback transport, noting each answer's Content-Length."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.sizes.append(int(response.headers.get("content-length", 0)))
        return response


def all_patterns(base_url: str) -> list[list[object]]:
    texts = common.window_texts(512, 1 + 3 * REPEATS, stride=499)
    cached_text, fresh = texts[0], texts[1:]
    variants = {
        "JSON": {"format": "json"},
        "safetensors": {"format": "safetensors"},
        "safetensors float16": {"format": "safetensors", "dtype": "float16"},
    }
    times: dict[tuple[str, str], list[float]] = {}
    sizes: dict[str, int] = {}
    recorder = SizeRecorder()
    with Client(base_url, transport=recorder, timeout=600) as client:
        client.analyze(cached_text, patterns=ALL_HEADS, format="safetensors")  # fills the cache

        def timed(kind: str, label: str, text: str) -> None:
            start = time.perf_counter()
            result = client.analyze(text, patterns=ALL_HEADS, **variants[label])
            activity, patterns = result.to_numpy(), result.patterns_to_numpy()
            times.setdefault((kind, label), []).append(time.perf_counter() - start)
            assert activity.shape == (8, 16, 512) and patterns.shape == (128, 512, 512)
            sizes[label] = recorder.sizes[-1]

        # Interleaved, so a slow phase of the shared box hits every format alike.
        for repeat in range(REPEATS):
            for index, label in enumerate(variants):
                timed("fresh", label, fresh[repeat * len(variants) + index])
                timed("cached", label, cached_text)
    rows = []
    for kind in ("fresh", "cached"):
        baseline = common.median(times[(kind, "JSON")])
        for label in variants:
            seconds = common.median(times[(kind, label)])
            rows.append(
                [
                    f"{label}, {kind}",
                    f"{sizes[label] / 2**20:,.1f}",
                    seconds * 1e3,
                    f"{baseline / seconds:.1f}x",
                ]
            )
    return rows


def server_cpu(process: psutil.Process) -> float:
    """CPU seconds of the server and its children (the tagger process) so far."""
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        total += sum(child.cpu_times()[:2])
    return total


class CpuMeter:
    """CPU seconds spent, during a block, by this process (the client) and by the server."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process

    def __enter__(self) -> CpuMeter:
        self.client, self.server = time.process_time(), server_cpu(self.process)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client = time.process_time() - self.client
        self.server = server_cpu(self.process) - self.server


def batch_runs(
    base_url: str, process: psutil.Process, count: int
) -> tuple[list[list[object]], dict]:
    runs: list[tuple[str, str, int, Callable[[list[str]], list]]] = []
    client = Client(base_url)

    def loop(format: str) -> Callable[[list[str]], list]:
        return lambda texts: [client.analyze(text, format=format) for text in texts]

    def many(format: str, concurrency: int) -> Callable[[list[str]], list]:
        return lambda texts: client.analyze_many(texts, format=format, concurrency=concurrency)

    def many_async(format: str, concurrency: int) -> Callable[[list[str]], list]:
        async def run(texts: list[str]) -> list:
            async with AsyncClient(base_url) as aclient:
                return await aclient.analyze_many(texts, format=format, concurrency=concurrency)

        return lambda texts: asyncio.run(run(texts))

    for format in ("json", "safetensors"):
        runs += [
            ("plain loop of Client.analyze", format, 1, loop(format)),
            ("Client.analyze_many", format, 1, many(format, 1)),
            ("Client.analyze_many", format, 8, many(format, 8)),
            ("AsyncClient.analyze_many", format, 8, many_async(format, 8)),
        ]
    texts = common.window_texts(128, count * (len(runs) + 2) + 1, stride=32)
    client.analyze(texts.pop())  # warm-up, on a text no row sends

    def server_rate() -> tuple[dict, CpuMeter]:
        bodies = [{"text": text} for text in texts[:count]]
        del texts[:count]
        with CpuMeter(process) as cpu:
            result = asyncio.run(load(base_url, "/v1/analyze", bodies, 8))
        return result, cpu

    def cpu_cells(cpu: CpuMeter) -> list[object]:
        return [cpu.client / count * 1e3, cpu.server / count * 1e3]

    before, before_cpu = server_rate()
    measured = []
    for label, format, concurrency, function in runs:
        batch = texts[:count]
        del texts[:count]
        with CpuMeter(process) as cpu:
            start = time.perf_counter()
            results = function(batch)
            seconds = time.perf_counter() - start
        errors = sum(isinstance(result, HeadscopeError) for result in results)
        measured.append((label, format, concurrency, seconds, errors, cpu))
    after, after_cpu = server_rate()
    client.close()

    reference = (before["rps"] + after["rps"]) / 2
    raw = "server, 8 raw clients (bench_http.load)"
    rows: list[list[object]] = [
        [f"{raw}, before", "json", 8, count, count / before["rps"], before["rps"], "100%",
         *cpu_cells(before_cpu), sum(before["errors"].values())],
    ]  # fmt: skip
    for label, format, concurrency, seconds, errors, cpu in measured:
        rate = count / seconds
        share = f"{rate / reference:.0%}"
        rows.append(
            [label, format, concurrency, count, seconds, rate, share, *cpu_cells(cpu), errors]
        )
    rows.append(
        [f"{raw}, after", "json", 8, count, count / after["rps"], after["rps"], "100%",
         *cpu_cells(after_cpu), sum(after["errors"].values())]
    )  # fmt: skip
    return rows, {"server_rps_before": before, "server_rps_after": after}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400, help="texts per analyze_many row")
    parser.add_argument("--json", type=str, default=None, help="also write results here")
    args = parser.parse_args(argv)

    with server() as (base_url, process, _):
        pattern_rows = all_patterns(base_url)
        batch_rows, extra = batch_runs(base_url, process, args.count)

    print(f"\n### The Python client on 127.0.0.1 ({common.machine_description()})\n")
    print("512 tokens, POST /v1/analyze with all 128 patterns, through the client to numpy:\n")
    print(
        common.markdown_table(
            ["answer", "MB", "ms (median of 3)", "vs JSON"],
            pattern_rows,
        )
    )
    print(f"\n`analyze_many`, {args.count} distinct 128-token texts per row, no patterns:\n")
    print(
        common.markdown_table(
            [
                "run",
                "format",
                "concurrency",
                "texts",
                "s",
                "texts/s",
                "of server x8",
                "client CPU ms/text",
                "server CPU ms/text",
                "errors",
            ],  # fmt: skip
            batch_rows,
        )
    )
    results = {"all_patterns": pattern_rows, "batches": batch_rows, **extra}
    common.write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
