"""A real `headscope serve` (stand-in model, the session's probe run, the shared corpus) and
Debian's chromium driven by Playwright, for the viewer's tests.

Playwright never downloads a browser here: it launches the system chromium through
`executable_path` (HEADSCOPE_CHROMIUM, or chromium on the PATH). Without one the tests skip,
except in CI (CI=true), where a missing browser is a failure: scripts/test.sh installs it.
Every page runs behind a route guard that aborts, and fails the test for, any request to a
host other than 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers import CORPUS, STANDIN_DIR, serve_process

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

CHROMIUM_NAMES = ("chromium", "chromium-browser")
VIEWPORT = {"width": 1400, "height": 1000}


def missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI must run the viewer tests: scripts/test.sh installs chromium)")
    pytest.skip(reason)


def find_chromium() -> str | None:
    configured = os.environ.get("HEADSCOPE_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        missing(
            "no chromium binary (set HEADSCOPE_CHROMIUM, or `apt-get install chromium`); "
            "the viewer tests need a real browser"
        )
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def viewer_server(probe_run_dir) -> Iterator[str]:
    """`headscope serve` in a subprocess: the real CLI, app and lifespan."""
    with serve_process(
        "--model",
        str(STANDIN_DIR),
        "--probes",
        str(probe_run_dir),
        "--corpus",
        str(CORPUS),
    ) as (base_url, _process):
        yield base_url


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where the tests leave a screenshot of each view: HEADSCOPE_VIEWER_SCREENSHOTS, or a
    folder under pytest's temporary directory. Never inside the repository."""
    configured = os.environ.get("HEADSCOPE_VIEWER_SCREENSHOTS")
    folder = Path(configured) if configured else tmp_path_factory.mktemp("viewer-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class LoopbackGuard:
    """Aborts every request that would leave 127.0.0.1, and remembers it."""

    def __init__(self) -> None:
        self.offsite: list[str] = []

    def __call__(self, route) -> None:
        url = urlsplit(route.request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname != "127.0.0.1":
            self.offsite.append(route.request.url)
            route.abort()
            return
        route.continue_()


@pytest.fixture()
def new_page(browser):
    """Pages in fresh browser contexts (own sessionStorage), each behind the loopback guard."""
    contexts = []
    guard = LoopbackGuard()
    errors: list[str] = []

    def open_page():
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        context.route("**/*", guard)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert guard.offsite == [], f"requests left 127.0.0.1: {guard.offsite}"
    assert errors == [], f"uncaught errors in the page: {errors}"
