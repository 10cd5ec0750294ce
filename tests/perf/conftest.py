"""Texts for the fast-path tests: real TinyStories text from ../shared, short and long."""

from __future__ import annotations

import pytest

from tests.helpers import CORPUS


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
    from headscope.runtime.kernel import load_attention_kernel

    return load_attention_kernel("c", tmp_path_factory.mktemp("kernels"))
