"""The web viewer's speed in a real browser: Debian's chromium (Playwright) against a real
`headscope serve` on 127.0.0.1.

Measured in the page with `performance.now()`: first contentful paint of `/` and the time until
the viewer has drawn its first analysis; then, on a 128-token and a 512-token text, how long a
click takes to update the view (the viewer's own "idle" event after the action, then the next
frame), for selecting a head (activity view: no request; attention view: the head's whole
pattern; probe view: one prediction) and selecting a token (attention view: no request, the
pattern is loaded). Targets (issue 17):
first paint < 1 s, an interaction on 128 tokens < 100 ms, on 512 tokens < 300 ms.

    python bench/bench_viewer.py --probes models_store/<run_id>   # or --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext

import common
from bench_http import server

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

TARGET_MS = {"first paint": 1000.0, 128: 100.0, 512: 300.0}

# Click something, wait for the viewer's "idle" event, then for the next frame to be produced.
TIMED_CLICK = """async (selector) => {
  const target = document.querySelector(selector);
  const idle = new Promise((done) =>
    document.addEventListener("headscope:idle", done, { once: true }));
  const start = performance.now();
  target.click();
  await idle;
  const handled = performance.now() - start;
  await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
  return [handled, performance.now() - start];
}"""

FIRST_IDLE = """() => new Promise((done) => {
  const check = () => document.body.dataset.pending === "0"
    ? done(performance.now()) : setTimeout(check, 5);
  check();
})"""


def settle(page) -> None:
    page.wait_for_selector("body[data-pending='0']", state="attached")


def timed_clicks(page, selectors: Sequence[str]) -> tuple[list[float], list[float]]:
    handled, framed = [], []
    for selector in selectors:
        done, frame = page.evaluate(TIMED_CLICK, selector)
        handled.append(done)
        framed.append(frame)
    return handled, framed


def measure(base_url: str, chromium: str, repeats: int, probes: bool) -> list[list[object]]:
    from playwright.sync_api import sync_playwright

    texts = {128: common.window_texts(128, 1)[0], 512: common.window_texts(512, 1)[0]}
    rows: list[list[object]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        paints, readies = [], []
        for _ in range(repeats):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.goto(f"{base_url}/")
            ready = page.evaluate(FIRST_IDLE)
            paint = page.evaluate(
                "() => performance.getEntriesByName('first-contentful-paint')[0].startTime"
            )
            paints.append(paint)
            readies.append(ready)
            context.close()
        target = TARGET_MS["first paint"]
        rows.append(["first contentful paint of /", "-", *summary(paints), target])
        rows.append(["/ until the first analysis is drawn", "-", *summary(readies), "-"])

        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base_url}/")
        settle(page)
        heads = [f"#cell-L{(i * 3) % 8}H{(i * 5) % 16}" for i in range(repeats)]
        for length, text in texts.items():
            page.fill("#text", text)
            page.click("#analyze")
            settle(page)
            target = TARGET_MS[length]
            page.click("#tab-activity")
            settle(page)
            handled, framed = timed_clicks(page, heads)
            rows.append(["select head, activity view", length, *summary(framed), target])
            page.click("#tab-attention")
            settle(page)
            page.click(f"#tokens-attention-t{length // 2}")
            settle(page)
            handled, framed = timed_clicks(page, heads)
            rows.append(
                ["select head, attention view (its pattern)", length, *summary(framed), target]
            )
            tokens = [f"#tokens-attention-t{(i * 37) % length}" for i in range(repeats)]
            handled, framed = timed_clicks(page, tokens)
            rows.append(["select token, attention view", length, *summary(framed), target])
            if probes:
                page.click("#tab-probe")
                settle(page)
                handled, framed = timed_clicks(page, heads)
                rows.append(["select head, probe view", length, *summary(framed), target])
        browser.close()
    return rows


def summary(values: Sequence[float]) -> list[float]:
    return [common.median(values), common.percentile(values, 0.9)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an already running headscope serve (default: start one)")
    parser.add_argument("--probes", help="probe run directory for the server (probe view row)")
    parser.add_argument("--repeats", type=int, default=15, help="timed clicks per row")
    parser.add_argument(
        "--chromium",
        default=os.environ.get("HEADSCOPE_CHROMIUM") or shutil.which("chromium"),
        help="the chromium binary (default: HEADSCOPE_CHROMIUM, or chromium on the PATH)",
    )
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("no chromium found: apt-get install chromium, or pass --chromium")
    extra = ["--probes", args.probes] if args.probes else []
    started = time.perf_counter()
    with nullcontext((args.url, None, 0.0)) if args.url else server(extra) as (base_url, _, _):
        import httpx

        probes = httpx.get(f"{base_url}/readyz").json().get("probes") == "loaded"
        rows = measure(base_url, args.chromium, args.repeats, probes)
    print(f"\n### Viewer in chromium ({common.machine_description()})\n")
    print(
        common.markdown_table(
            ["interaction", "tokens", "median ms", "p90 ms", "target ms"],
            rows,
        )
    )
    print(f"\n{args.repeats} repeats per row; whole run {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
