"""Session-wide fixtures: stand-in models from ../shared, one loaded runtime, API clients."""

from __future__ import annotations

import os

import pytest

from tests.helpers import (
    CORPUS,
    NLTK_DATA,
    SHARED,
    STANDIN_DIR,
    ServerThread,
    make_random_model_dir,
)

# Offline and pointed at ../shared before anything imports nltk or transformers.
os.environ.setdefault("NLTK_DATA", str(NLTK_DATA))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HEADSCOPE_OFFLINE", "1")
# Servers train probes at first start by default; tests that want it say so, the rest start
# probe-free in seconds.
os.environ.setdefault("HEADSCOPE_TRAIN_PROBES_IF_MISSING", "0")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not STANDIN_DIR.is_dir():
        raise pytest.UsageError(
            f"{STANDIN_DIR} is missing: tests need ../shared (or HEADSCOPE_SHARED) with its assets"
        )


@pytest.fixture(scope="session")
def shared_dir():
    return SHARED


@pytest.fixture(scope="session")
def standin_dir():
    return STANDIN_DIR


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory):
    return make_random_model_dir(tmp_path_factory.mktemp("random-model"), seed=0)


@pytest.fixture(scope="session")
def settings(standin_dir, tmp_path_factory):
    """The session runtime's settings: an empty probe store, so it starts probe-free."""
    from headscope.settings import Settings

    return Settings(model=str(standin_dir), store=tmp_path_factory.mktemp("empty-store"))


@pytest.fixture(scope="session")
def runtime(settings):
    """The trained stand-in, loaded once for the whole session (treat as read-only); it tags in
    a child process, as the server does by default."""
    from headscope.analysis.service import load_runtime

    loaded = load_runtime(settings)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def random_runtime(random_model_dir):
    """A random-weight model; it tags in its own process (`tagger_process=False`), so the tests
    that use it cover that path."""
    from headscope.analysis.service import load_runtime
    from headscope.settings import Settings

    loaded = load_runtime(Settings(model=str(random_model_dir), tagger_process=False))
    yield loaded
    loaded.close()


@pytest.fixture()
def api(settings, runtime):
    """In-process client over the real app (lifespan runs, reusing the session runtime)."""
    from fastapi.testclient import TestClient

    from headscope.app import create_app

    with TestClient(create_app(settings, runtime=runtime)) as client:
        yield client


@pytest.fixture(scope="session")
def live_server(settings, runtime):
    """A real uvicorn server on 127.0.0.1 serving the session runtime; yields its base URL."""
    from headscope.app import create_app

    with ServerThread(create_app(settings, runtime=runtime)) as server:
        yield server.base_url


# -- probes ------------------------------------------------------------------------------------
# One small probe run, trained once per session on a slice of the shared corpus with the session
# runtime (seconds); `probes_runtime` is a copy of the session runtime with that run attached
# through the real loader, so `runtime` itself stays probe-free.
PROBE_TRAIN_SEQUENCES = 24  # per split


@pytest.fixture(scope="session")
def probe_run_dir(runtime, tmp_path_factory):
    from headscope.analysis.corpus_text import load_corpus
    from headscope.analysis.probes import TrainConfig, train_probe_run
    from headscope.model.probe_features import no_progress

    store = tmp_path_factory.mktemp("probe-store")
    trained = train_probe_run(
        runtime,
        load_corpus(CORPUS),
        TrainConfig(max_sequences=PROBE_TRAIN_SEQUENCES),
        store=store,
        progress=no_progress,
    )
    return trained.directory


@pytest.fixture(scope="session")
def probes_runtime(runtime, settings, probe_run_dir):
    import copy

    from headscope.analysis.probes import attach_probes

    probed = copy.copy(runtime)
    attach_probes(probed, settings.model_copy(update={"probes": probe_run_dir}))
    return probed


@pytest.fixture()
def probes_api(settings, probes_runtime):
    """In-process client over the real app, with the session probe run loaded."""
    from fastapi.testclient import TestClient

    from headscope.app import create_app

    with TestClient(create_app(settings, runtime=probes_runtime)) as client:
        yield client


# -- real texts for the engine and encoding tests: short, and long (past the local window) --


@pytest.fixture(scope="session")
def corpus_ids(runtime) -> list[int]:
    """Token ids of the sample's first ~3,000 tokens."""
    return runtime.tokenizer(CORPUS.read_text()[:14000]).input_ids


@pytest.fixture(scope="session")
def short_text() -> str:
    return CORPUS.read_text().split("\n\n")[0]


@pytest.fixture(scope="session")
def long_text(runtime) -> str:
    """A real text of ~400 tokens: past the 256-token local window and the 128-row blocks."""
    text = CORPUS.read_text()[:1600]
    assert 300 < len(runtime.tokenizer(text).input_ids) <= runtime.max_tokens
    return text


@pytest.fixture(scope="session")
def attention_kernel(tmp_path_factory):
    """The fused kernel, built into a fresh folder: CI machines have a C compiler, so a build
    failure fails the tests instead of silently testing only the torch path."""
    from headscope.model.backends.native import load_attention_kernel

    return load_attention_kernel("c", tmp_path_factory.mktemp("kernels"))
