#!/usr/bin/env python
"""Soak test: N mixed requests (a share of them malformed) from several concurrent clients
against a headscope server on loopback; prints the 5xx count and the server's RSS growth from
mid-run to the end, and exits non-zero when either is over its bound.

    python scripts/soak.py --model ../shared/assets/standin-trained --requests 10000
    python scripts/soak.py --url http://127.0.0.1:8000 --pid 12345 --requests 600

Without --url it starts `headscope serve` itself on 127.0.0.1 (a free port) and stops it at the
end. It only ever talks to 127.0.0.1 / ::1 / localhost, and stops after --requests requests or
--max-seconds seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import httpx
import psutil

from headscope.launcher import serve_process, start_or_exit

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
STORY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    'sunshine. One day, she saw a big red ball in the park. "Can I play with you?" asked a boy '
    "named Tom. Lily smiled and said yes. They played all day until the sun went down."
)


@dataclass(frozen=True)
class Call:
    kind: str  # what the request exercises, for the report
    malformed: bool
    method: str
    path: str
    json: object = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def text_of(rng: random.Random) -> str:
    words = STORY.split(" ")
    start = rng.randrange(len(words) - 5)
    return " ".join(words[start : start + rng.randint(3, 40)])


def valid_call(rng: random.Random, probes: bool) -> Call:
    text = text_of(rng)
    layer, head = rng.randrange(8), rng.randrange(16)
    choices = [
        Call("healthz", False, "GET", "/healthz"),
        Call("readyz", False, "GET", "/readyz"),
        Call("model", False, "GET", "/v1/model"),
        Call("tag", False, "POST", "/v1/tag", {"text": text}),
        Call("activity", False, "POST", "/v1/activity", {"text": text, "layers": [layer]}),
        Call(
            "attention",
            False,
            "POST",
            "/v1/attention",
            {"text": text, "layer": layer, "head": head},
        ),
        Call(
            "analyze",
            False,
            "POST",
            "/v1/analyze",
            {"text": text, "patterns": [{"layer": layer, "head": head}]},
        ),
        Call(
            "corpus",
            False,
            "POST",
            "/v1/corpus/activity-by-tag",
            {"texts": [text, text_of(rng)], "tag": "NN"},
        ),
    ]
    figure = urlencode({"text": text, "layer": layer, "head": head})
    choices.append(Call("figure", False, "GET", f"/v1/figures/activity.png?{figure}"))
    if probes:
        choices += [
            Call(
                "probes",
                False,
                "POST",
                "/v1/probes/predict",
                {"text": text, "vector": "key", "layer": layer, "head": head},
            ),
            Call("probes", False, "GET", "/v1/probes/scores?vector=query&tag=macro&metric=f1"),
        ]
    return rng.choice(choices)


def malformed_call(rng: random.Random) -> Call:
    json_type = {"content-type": "application/json"}
    choices = [
        Call(
            "bad-json",
            True,
            "POST",
            "/v1/tag",
            content=b'{"text": "unterminated',
            headers=json_type,
        ),
        Call("missing-field", True, "POST", "/v1/attention", {"text": "A cat.", "layer": 0}),
        Call("unknown-field", True, "POST", "/v1/tag", {"text": "A cat.", "colour": "red"}),
        Call("wrong-type", True, "POST", "/v1/attention", {"text": 7, "layer": "x", "head": []}),
        Call(
            "unknown-head",
            True,
            "POST",
            "/v1/attention",
            {"text": "A cat.", "layer": 3, "head": 99},
        ),
        Call(
            "huge-int",
            True,
            "POST",
            "/v1/attention",
            {"text": "A cat.", "layer": 10**30, "head": 0},
        ),
        Call("empty-text", True, "POST", "/v1/analyze", {"text": "  "}),
        Call("too-long", True, "POST", "/v1/tag", {"text": " cat" * 600}),
        Call("not-an-object", True, "POST", "/v1/activity", [1, 2, 3]),
        Call(
            "bad-utf8", True, "POST", "/v1/tag", content=b'{"text": "\xff\xfe"}', headers=json_type
        ),
        Call(
            "nested",
            True,
            "POST",
            "/v1/tag",
            content=b"[" * 50_000 + b"]" * 50_000,
            headers=json_type,
        ),
        Call(
            "nan",
            True,
            "POST",
            "/v1/attention",
            content=b'{"text": "a", "layer": NaN, "head": 0}',
            headers=json_type,
        ),
        Call("wrong-method", True, "GET", "/v1/analyze"),
        Call("unknown-path", True, "GET", "/v1/nothing-here"),
        Call("bad-query", True, "GET", "/v1/probes/scores?vector=nope&tag=&metric=x"),
        Call("bad-corpus", True, "POST", "/v1/corpus/quotes", {"texts": [], "n_sequences": -1}),
    ]
    if rng.random() < 0.02:  # rare, it costs a megabyte on the wire
        return Call("too-big", True, "POST", "/v1/tag", {"text": "a" * 1_100_000})
    return rng.choice(choices)


def plan(count: int, malformed_share: float, seed: int, probes: bool) -> list[Call]:
    rng = random.Random(seed)
    return [
        malformed_call(rng) if rng.random() < malformed_share else valid_call(rng, probes)
        for _ in range(count)
    ]


def server_to_soak(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    stack: contextlib.ExitStack,
    serve_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[str, int]:
    """(url, pid) of the server to soak: the running one that --url and --pid name (loopback
    only), or with --model a fresh `headscope serve` on loopback, which `stack` stops."""
    if args.url:
        if urlsplit(args.url).hostname not in LOOPBACK:
            parser.error("--url must be on loopback (127.0.0.1, ::1 or localhost)")
        if args.pid is None:
            parser.error("--url needs --pid (the server's process id, for its memory)")
        return args.url.rstrip("/"), args.pid
    if not args.model:
        parser.error("give --url and --pid, or --model")
    server = serve_process(
        *("--model", args.model, "--log-level", "warning", *serve_args),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        ready_timeout=300,
        poll_interval=0.2,
        stop_timeout=60,
    )
    url, process = start_or_exit(stack, server, "soak")
    return url, process.pid


class Soak:
    def __init__(self, url: str, pid: int, calls: list[Call], clients: int, max_seconds: float):
        self.url, self.calls, self.clients, self.max_seconds = url, calls, clients, max_seconds
        self.server = psutil.Process(pid)
        self.lock = threading.Lock()
        self.next_index = 0
        self.done = 0
        self.statuses: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()  # valid refused, or malformed accepted
        self.server_errors: list[str] = []
        self.rss: dict[str, int] = {}
        self.deadline = 0.0

    def rss_now(self) -> int:
        return self.server.memory_info().rss

    def take(self) -> Call | None:
        with self.lock:
            if self.next_index >= len(self.calls) or time.monotonic() > self.deadline:
                return None
            call = self.calls[self.next_index]
            self.next_index += 1
            return call

    def record(self, call: Call, outcome: int | str) -> None:
        with self.lock:
            self.done += 1
            if isinstance(outcome, str):
                self.statuses[outcome] += 1
                if not call.malformed or call.kind != "too-big":
                    self.unexpected[f"{call.kind}: {outcome}"] += 1
            else:
                self.statuses[f"{outcome // 100}xx"] += 1
                if outcome >= 500:
                    self.server_errors.append(f"{call.method} {call.path} -> {outcome}")
                elif call.malformed and outcome < 400:
                    self.unexpected[f"{call.kind} accepted ({outcome})"] += 1
                elif not call.malformed and outcome >= 400:
                    self.unexpected[f"{call.kind} refused ({outcome})"] += 1
            if self.done == len(self.calls) // 2:
                self.rss["mid"] = self.rss_now()

    def client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as session:
            while (call := self.take()) is not None:
                try:
                    response = session.request(
                        call.method,
                        call.path,
                        json=call.json,
                        content=call.content,
                        headers=call.headers,
                    )
                    outcome: int | str = response.status_code
                except httpx.HTTPError as err:
                    outcome = type(err).__name__  # e.g. the server closed an over-size upload
                self.record(call, outcome)

    def run(self) -> dict:
        self.rss["start"] = self.rss_now()
        started = time.monotonic()
        self.deadline = started + self.max_seconds
        threads = [threading.Thread(target=self.client) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        self.rss["end"] = self.rss_now()
        mid = self.rss.get("mid", self.rss["start"])
        return {
            "requests": self.done,
            "planned": len(self.calls),
            "malformed": sum(call.malformed for call in self.calls[: self.done]),
            "clients": self.clients,
            "seconds": round(elapsed, 1),
            "requests_per_second": round(self.done / elapsed, 1) if elapsed else None,
            "statuses": dict(sorted(self.statuses.items())),
            "server_errors": len(self.server_errors),
            "server_error_examples": self.server_errors[:5],
            "unexpected": dict(self.unexpected),
            "rss_mib": {k: round(v / 2**20, 1) for k, v in self.rss.items()},
            "rss_growth_mid_to_end": round((self.rss["end"] - mid) / mid, 4),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="A running server (loopback only); needs --pid.")
    parser.add_argument("--pid", type=int, help="The server's process id, for its RSS.")
    parser.add_argument("--model", help="Start `headscope serve --model MODEL` for the soak.")
    parser.add_argument("--serve-arg", action="append", default=[], help="Extra serve flags.")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--malformed", type=float, default=0.3, help="Share of bad requests.")
    parser.add_argument("--max-seconds", type=float, default=1800)
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="Print the figures as one JSON line.")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        url, pid = server_to_soak(parser, args, stack, args.serve_arg)
        probes = httpx.get(f"{url}/readyz", timeout=10).json().get("probes") == "loaded"
        calls = plan(args.requests, args.malformed, args.seed, probes)
        figures = Soak(url, pid, calls, args.clients, args.max_seconds).run()

    ok = figures["server_errors"] == 0 and figures["rss_growth_mid_to_end"] < args.max_rss_growth
    ok = ok and not figures["unexpected"]
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"soak: {figures['requests']} requests ({figures['malformed']} malformed) from "
            f"{figures['clients']} clients in {figures['seconds']} s "
            f"({figures['requests_per_second']} req/s)"
        )
        print(f"  statuses: {figures['statuses']}")
        print(f"  5xx: {figures['server_errors']}  {figures['server_error_examples'] or ''}")
        print(f"  unexpected: {figures['unexpected'] or 'none'}")
        rss = figures["rss_mib"]
        print(
            f"  server RSS MiB: start {rss['start']}, mid {rss.get('mid')}, end {rss['end']}; "
            f"growth mid->end {figures['rss_growth_mid_to_end']:.2%} "
            f"(bound {args.max_rss_growth:.0%})"
        )
        print(f"  {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
