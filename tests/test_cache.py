"""The analysis LRU: hits return exactly what misses computed; bounded; keyed by fingerprint."""

from __future__ import annotations

import numpy as np
import pytest

from headscope.analysis.pool import resolved
from headscope.analysis.service import Runtime
from headscope.cache import ENTRY_OVERHEAD_BYTES, AnalysisCache, payload_bytes
from headscope.schemas import ActivityRequest, AnalyzeRequest, AttentionRequest, TagRequest


def runtime_with_cache(runtime, megabytes: int, fingerprint: str | None = None) -> Runtime:
    """A second Runtime over the session's loaded parts, with its own cache."""
    settings = runtime.settings.model_copy(update={"analysis_cache_mb": megabytes})
    return Runtime(
        settings,
        runtime.files,
        runtime.model,
        runtime.tokenizer,
        runtime.tagger,
        fingerprint or runtime.weights_sha256,
    )


def assert_same_payload(left, right) -> None:
    if isinstance(left, np.ndarray):
        assert left.dtype == right.dtype and np.array_equal(left, right)
    elif isinstance(left, dict):
        assert left.keys() == right.keys()
        for key in left:
            assert_same_payload(left[key], right[key])
    elif isinstance(left, list):
        assert len(left) == len(right)
        for a, b in zip(left, right, strict=True):
            assert_same_payload(a, b)
    else:
        assert left == right


@pytest.mark.parametrize(
    ("method", "request_model"),
    [
        ("analyze_payload", AnalyzeRequest(text="x", patterns=[{"layer": 1, "head": 2}])),
        ("activity_payload", ActivityRequest(text="x", layers=[0, 3], heads=[5])),
        ("attention_payload", AttentionRequest(text="x", layer=2, head=7, query=4)),
        ("tag_payload", TagRequest(text="x", alignment="paper")),
    ],
)
def test_hits_equal_misses_and_uncached_results(runtime, short_text, method, request_model):
    request_model = request_model.model_copy(update={"text": short_text})
    cached = runtime_with_cache(runtime, 16)
    uncached = runtime_with_cache(runtime, 0)
    # resolved: analyses that need tags may hand back an Awaiting (the pool's form).
    miss = resolved(getattr(cached, method)(request_model))
    hit = resolved(getattr(cached, method)(request_model))
    assert cached.cache.hits == 1 and cached.cache.misses == 1
    assert hit is miss
    assert_same_payload(hit, resolved(getattr(uncached, method)(request_model)))
    assert len(uncached.cache) == 0


def test_cached_arrays_are_read_only(runtime, short_text):
    cached = runtime_with_cache(runtime, 16)
    payload = cached.activity_payload(ActivityRequest(text=short_text))
    with pytest.raises(ValueError):
        payload["activity"][0, 0, 0] = 1.0


def test_options_and_fingerprint_are_part_of_the_key(runtime, short_text):
    cached = runtime_with_cache(runtime, 16)
    first = cached.activity_payload(ActivityRequest(text=short_text, layers=[0]))
    second = cached.activity_payload(ActivityRequest(text=short_text, layers=[1]))
    assert cached.cache.hits == 0
    assert not np.array_equal(first["activity"], second["activity"])
    # Encoding options do not change what is computed, so they share the entry.
    cached.activity_payload(ActivityRequest(text=short_text, layers=[0], decimals=2))
    assert cached.cache.hits == 1
    # Another model's fingerprint never sees this model's entries, even in a shared cache.
    other = runtime_with_cache(runtime, 16, fingerprint="0" * 64)
    other.cache = cached.cache
    other.activity_payload(ActivityRequest(text=short_text, layers=[0]))
    assert cached.cache.hits == 1 and cached.cache.misses == 3


def test_errors_are_not_cached(runtime):
    from headscope.errors import EmptyText

    cached = runtime_with_cache(runtime, 16)
    for _ in range(2):
        with pytest.raises(EmptyText):
            cached.analyze_payload(AnalyzeRequest(text="   "))
    assert len(cached.cache) == 0


def test_lru_evicts_least_recently_used_within_the_byte_bound():
    def entry() -> dict:
        return {"x": np.zeros(1000, dtype=np.float32)}

    entry_bytes = payload_bytes(entry()) + len(repr(("a",))) + ENTRY_OVERHEAD_BYTES
    cache = AnalysisCache(int(3.5 * entry_bytes))  # room for three entries
    for name in ("a", "b", "c"):
        cache.put((name,), entry())
    assert len(cache) == 3
    assert cache.get(("a",)) is not None  # a is now the most recent
    cache.put(("d",), entry())
    assert cache.get(("b",)) is None
    assert cache.get(("a",)) is not None and cache.get(("d",)) is not None
    assert cache.size_bytes <= cache.max_size
    cache.put(("huge",), {"x": np.zeros(10**6, dtype=np.float32)})  # bigger than the cache
    assert cache.get(("huge",)) is None and len(cache) >= 2


def test_api_serves_repeats_from_the_cache(settings, runtime, short_text):
    from fastapi.testclient import TestClient

    from headscope.app import create_app

    cached = runtime_with_cache(runtime, 16)
    body = {"text": short_text + " Cache me.", "patterns": [{"layer": 0, "head": 1}]}
    with TestClient(create_app(settings, runtime=cached)) as api:
        first = api.post("/v1/analyze", json=body)
        second = api.post("/v1/analyze", json=body)
    assert first.status_code == second.status_code == 200
    assert cached.cache.hits == 1 and cached.cache.misses == 1
    assert first.content == second.content
