"""Apps whose corpus is the TinyStories sample in ../shared, with small caps for the tests."""

from __future__ import annotations

import copy

import pytest

from tests.helpers import CORPUS, SHARED

# Small caps, so the cap tests need only a few short texts.
MAX_SEQUENCES = 20
MAX_TOKENS = 2500


@pytest.fixture(scope="session")
def corpus_settings(standin_dir):
    from headscope.settings import Settings

    return Settings(
        model=str(standin_dir),
        store=SHARED / "nonexistent-store",
        corpus=str(CORPUS),
        corpus_max_sequences=MAX_SEQUENCES,
        corpus_max_tokens=MAX_TOKENS,
        corpus_cache_size=16,
    )


@pytest.fixture(scope="module")
def corpus_api(corpus_settings, runtime):
    """In-process client over the real app, its corpus the TinyStories sample."""
    from fastapi.testclient import TestClient

    from headscope.app import create_app

    with TestClient(create_app(corpus_settings, runtime=runtime)) as client:
        yield client


@pytest.fixture()
def runtime_view(runtime):
    """The session runtime's model, tokenizer and tagger behind a Runtime object of its own, so a
    test can set `probes` or `max_tokens` without touching the shared one."""
    return copy.copy(runtime)
