"""The service end to end over HTTP on 127.0.0.1: a real `headscope serve` process.

Measures startup to ready, RSS at rest and under load, latency (p50/p99) and requests/s of
POST /v1/analyze and /v1/activity for 128- and 512-token texts with 1, 8 and 32 concurrent
clients, a cache hit, a large pattern set as JSON vs safetensors, and the corpus endpoints on
100 sequences. Every request of a load run has its own text (windows over the shared sample),
so the analysis cache never answers for it; the cache is measured on its own row.

The load generator runs in this process, on the same 2 cores as the server, so the numbers
include the cost of a client. It speaks HTTP/1.1 over asyncio streams (keep-alive, one connection
per client): httpx spends about 3 ms of CPU per 128-token analysis parsing the 190 kB answer,
time a 2-core box then takes from the server. Rows marked "httpx client" repeat a load with
httpx.AsyncClient, for comparison with earlier runs. All traffic stays on the loopback interface
and every loop is bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager

import common
import httpx
import psutil

from headscope.launcher import serve_process, total_rss

CLIENTS = (1, 8, 32)
# Requests per (length, clients): enough for a p99 that means something at 128 tokens, while
# keeping the whole run to a few minutes on 2 cores.
REQUESTS = {128: {1: 200, 8: 400, 32: 640}, 512: {1: 40, 8: 96, 32: 128}}
# POST /v1/analyze, 128 tokens, with httpx as the client: {clients: requests}. With REQUESTS,
# nearly all of the sample's 1,490 distinct 128-token windows.
HTTPX_REQUESTS = {1: 80, 8: 160}


@contextmanager
def server(extra_args: Sequence[str] = (), env: dict[str, str] | None = None):
    """`headscope serve` on a free loopback port; yields (base_url, psutil.Process, startup s)."""
    started = time.perf_counter()
    with serve_process(
        *("--model", str(common.STANDIN_DIR), "--corpus", str(common.CORPUS)),
        *("--allow-missing-probes", "--log-level", "warning", *extra_args),
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        ready_timeout=120,
        poll_interval=0.02,
        stop_timeout=20,
    ) as (base_url, process):
        yield base_url, psutil.Process(process.pid), time.perf_counter() - started


class RssSampler:
    """Peak RSS of a process and its children, sampled every 50 ms in a thread while active."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = total_rss(process)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, total_rss(self.process))
            except psutil.Error:
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Connection:
    """One keep-alive HTTP/1.1 connection: a request, then its Content-Length-framed answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, base_url: str) -> Connection:
        host, port = httpx.URL(base_url).host, httpx.URL(base_url).port
        return cls(*await asyncio.open_connection(host, port))

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        content = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + content)
        response_head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = response_head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in header_lines if line)
        return int(status_line.split()[1]), await self.reader.readexactly(
            int(headers["content-length"])
        )

    def close(self) -> None:
        self.writer.close()


async def load(
    base_url: str,
    path: str,
    bodies: Sequence[dict],
    clients: int,
    headers=None,
    with_httpx: bool = False,
) -> dict:
    """`clients` concurrent workers sending `bodies` (each once); latencies and throughput.

    Each worker holds one `Connection`; with `with_httpx` or `headers`, the workers share an
    httpx.AsyncClient instead."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    def record(start: float, status: int) -> None:
        latencies.append(time.perf_counter() - start)
        if status != 200:
            errors[status] = errors.get(status, 0) + 1

    async def raw_worker() -> None:
        connection = await Connection.open(base_url)
        try:
            while not queue.empty():
                body = queue.get_nowait()
                start = time.perf_counter()
                status, _ = await connection.request("POST", path, body)
                record(start, status)
        finally:
            connection.close()

    async def httpx_workers() -> None:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as client:

            async def worker() -> None:
                while not queue.empty():
                    body = queue.get_nowait()
                    start = time.perf_counter()
                    response = await client.post(path, json=body, headers=headers)
                    await response.aread()
                    record(start, response.status_code)

            await asyncio.gather(*(worker() for _ in range(clients)))

    started = time.perf_counter()
    if with_httpx or headers:
        await httpx_workers()
    else:
        await asyncio.gather(*(raw_worker() for _ in range(clients)))
    wall = time.perf_counter() - started
    return {
        "requests": len(bodies),
        "p50_ms": common.median(latencies) * 1e3,
        "p99_ms": common.percentile(latencies, 0.99) * 1e3,
        "rps": len(bodies) / wall,
        "errors": errors,
    }


def run_load_matrix(base_url: str, process: psutil.Process, quick: bool) -> tuple[list, dict]:
    rows, results = [], {}
    texts = {
        128: common.window_texts(
            128, sum(REQUESTS[128].values()) + sum(HTTPX_REQUESTS.values()) + 1, stride=128
        ),
        512: common.window_texts(512, sum(REQUESTS[512].values()), stride=256),
    }
    peak_rss = 0
    for path in ("/v1/analyze", "/v1/activity"):
        for length in (128, 512):
            offset = 0
            for clients in CLIENTS:
                count = REQUESTS[length][clients] // (4 if quick else 1)
                bodies = [{"text": text} for text in texts[length][offset : offset + count]]
                offset += count
                # One warm-up request per configuration, on a text not in the timed set.
                httpx.post(base_url + path, json={"text": texts[length][-1]}, timeout=60)
                with RssSampler(process) as sampler:
                    result = asyncio.run(load(base_url, path, bodies, clients))
                peak_rss = max(peak_rss, sampler.peak)
                results[f"{path} {length} x{clients}"] = result
                rows.append(load_row(path, length, clients, result))
    # The same load with httpx as the client, on texts of its own (after the matrix's, before
    # the warm-up text): what earlier runs of this benchmark measured.
    offset = sum(REQUESTS[128].values())
    for clients, count in HTTPX_REQUESTS.items():
        count //= 4 if quick else 1
        bodies = [{"text": text} for text in texts[128][offset : offset + count]]
        offset += count
        with RssSampler(process) as sampler:
            result = asyncio.run(load(base_url, "/v1/analyze", bodies, clients, with_httpx=True))
        peak_rss = max(peak_rss, sampler.peak)
        results[f"/v1/analyze 128 x{clients} httpx"] = result
        rows.append(load_row("/v1/analyze (httpx client)", 128, clients, result))
    results["peak_rss_mb"] = peak_rss / 2**20
    return rows, results


def load_row(label: str, length: int, clients: int, result: dict) -> list:
    timings = [result["p50_ms"], result["p99_ms"], result["rps"]]
    return [label, length, clients, result["requests"], *timings, sum(result["errors"].values())]


def http_floor(base_url: str) -> list:
    """Latency of requests that do almost no work: what the HTTP path itself costs."""

    async def timed(method: str, path: str, bodies: Sequence[dict | None]) -> float:
        connection = await Connection.open(base_url)
        latencies = []
        try:
            for body in bodies:
                start = time.perf_counter()
                status, _ = await connection.request(method, path, body)
                latencies.append(time.perf_counter() - start)
                assert status == 200, status
        finally:
            connection.close()
        return common.median(latencies[10:]) * 1e3

    healthz = asyncio.run(timed("GET", "/healthz", [None] * 300))
    # A new sentence each time, so the analysis cache never answers.
    tag = asyncio.run(timed("POST", "/v1/tag", [{"text": f"Tom ran {i}."} for i in range(300)]))
    return [
        ["GET /healthz, 1 client (HTTP path alone)", healthz, ""],
        ["POST /v1/tag, a 4-word sentence, 1 client", tag, ""],
    ]


def cache_and_encodings(base_url: str) -> list:
    rows = []
    text128 = common.window_texts(128, 1, stride=997)[0]
    body = {"text": text128}
    httpx.post(base_url + "/v1/analyze", json=body, timeout=60)  # fills the cache
    hit = asyncio.run(load(base_url, "/v1/analyze", [body] * 200, 1))
    rows.append(["POST /v1/analyze 128 tokens, repeated text (cache hit)", hit["p50_ms"], ""])

    text512 = common.window_texts(512, 1, stride=1499)[0]
    one_layer = {"text": text512, "patterns": [{"layer": 2, "head": h} for h in range(16)]}
    for label, headers, extra in (
        ("JSON", None, {}),
        ("safetensors", {"Accept": "application/x-safetensors"}, {}),
        ("safetensors float16", {"Accept": "application/x-safetensors"}, {"dtype": "float16"}),
    ):
        timings, size = [], 0
        for _ in range(5):
            start = time.perf_counter()
            response = httpx.post(
                base_url + "/v1/analyze", json={**one_layer, **extra}, headers=headers, timeout=120
            )
            timings.append(time.perf_counter() - start)
            size = len(response.content)
            assert response.status_code == 200, response.text[:500]
        rows.append(
            [
                f"POST /v1/analyze 512 tokens + 16 patterns (512x512), {label} (cached after 1st)",
                common.median(timings) * 1e3,
                f"{size / 2**20:.1f} MB",
            ]
        )
    return rows


def corpus_endpoints(base_url: str) -> list:
    tok = common.tokenizer()
    texts = [tok.decode(ids) for ids in common.story_sequences(100)]
    requests = [
        ("/v1/corpus/activity-by-tag", {"texts": texts, "tag": "NN"}),
        ("/v1/corpus/attention-by-tag", {"texts": texts, "layer": 1, "head": 2, "from_tag": "NN"}),
        ("/v1/corpus/quotes", {"texts": texts}),
    ]
    rows = []
    for path, body in requests:
        start = time.perf_counter()
        response = httpx.post(base_url + path, json=body, timeout=300)
        seconds = time.perf_counter() - start
        status = response.status_code
        rows.append([f"POST {path}, 100 sequences", seconds * 1e3, "" if status == 200 else status])
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the requests")
    parser.add_argument("--json", type=str, default=None, help="also write results here")
    args = parser.parse_args(argv)

    results: dict = {}
    startups = []
    # Startup to ready, three times (a fresh process each time; the first may pay a cold disk).
    for _ in range(2):
        with server() as (_, process, startup):
            startups.append(startup)
    with server() as (base_url, process, startup):
        startups.append(startup)
        ready = httpx.get(base_url + "/readyz").json()
        rest_rss = total_rss(process) / 2**20
        load_rows, load_results = run_load_matrix(base_url, process, args.quick)
        extra_rows = http_floor(base_url) + cache_and_encodings(base_url)
        corpus_rows = corpus_endpoints(base_url)
        after_rss = total_rss(process) / 2**20
    results.update(load_results)
    results.update(
        startup_s=startups, rss_at_rest_mb=rest_rss, rss_after_mb=after_rss, readyz=ready
    )

    print("\n### HTTP on 127.0.0.1 (`headscope serve`, default settings)\n")
    print(
        common.markdown_table(
            ["endpoint", "tokens", "clients", "requests", "p50 ms", "p99 ms", "req/s", "errors"],
            load_rows,
        )
    )
    print()
    print(common.markdown_table(["measurement", "ms", "size / status"], extra_rows + corpus_rows))
    print()
    print(
        common.markdown_table(
            ["process", "value"],
            [
                ["startup to ready (s), 3 fresh starts", ", ".join(f"{s:.2f}" for s in startups)],
                ["probes at startup", f"{ready.get('probes')} ({ready.get('probes_reason')})"],
                ["RSS at rest, server + tagger process (MB)", rest_rss],
                ["RSS peak under load, server + tagger process (MB)", load_results["peak_rss_mb"]],
                ["RSS after all runs, server + tagger process (MB)", after_rss],
            ],
        )
    )
    common.write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
