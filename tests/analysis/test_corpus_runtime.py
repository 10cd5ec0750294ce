"""The corpus analysis's parts: truncation of drawn sequences, the LRU, progress logs."""

from __future__ import annotations

import logging

import pytest

from tests.analysis.test_corpus_api import TEXTS
from tests.helpers import CORPUS


def test_drawn_sequences_are_cut_to_max_tokens(runtime_view, corpus_settings):
    from headscope.analysis.corpus import CorpusAnalysis
    from headscope.analysis.corpus_text import read_corpus
    from headscope.schemas import QuotesRequest

    runtime_view.max_tokens = 12
    analysis = CorpusAnalysis(runtime_view, corpus_settings)
    drawn = analysis.sequences(QuotesRequest(n_sequences=6, seed=2))
    originals = [read_corpus(CORPUS).sequences[i] for i in drawn.source.indices]
    full_lengths = [
        len(runtime_view.tokenizer(text, add_special_tokens=False)["input_ids"])
        for text in originals
    ]
    assert drawn.source.truncated == sum(length > 12 for length in full_lengths) > 0
    for encoded, original, length in zip(drawn.encoded, originals, full_lengths, strict=True):
        assert len(encoded) == min(length, 12)
        assert original.startswith(encoded.text)
        assert encoded.offsets[-1][1] == len(encoded.text)
    assert drawn.source.tokens == sum(min(length, 12) for length in full_lengths)


def test_result_cache_keeps_the_most_recent_entries():
    from headscope.cache import AnalysisCache, one_per_entry
    from headscope.schemas import HeadId

    cache = AnalysisCache(2, size_of=one_per_entry)
    for key in "abc":
        cache.put(key, HeadId(layer=0, head=ord(key)))
        if key == "b":
            assert cache.get("a") is not None  # "a" is now the most recent
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    disabled = AnalysisCache(0, size_of=one_per_entry)
    disabled.put("a", HeadId(layer=0, head=0))
    assert disabled.get("a") is None


def test_long_requests_log_their_progress(runtime, corpus_settings, caplog, monkeypatch):
    import headscope.analysis.corpus as corpus
    from headscope.schemas import ActivityByTagRequest

    monkeypatch.setattr(corpus, "PROGRESS_EVERY_SECONDS", 0.0)
    analysis = corpus.CorpusAnalysis(runtime, corpus_settings)
    with caplog.at_level(logging.INFO, logger="headscope.corpus"):
        analysis.activity_by_tag(ActivityByTagRequest(tag="NN", texts=TEXTS))
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"tagged {len(TEXTS)}/{len(TEXTS)} sequences" in m for m in messages), messages
    assert any(f"analysed {len(TEXTS)}/{len(TEXTS)} sequences" in m for m in messages)
    assert any("done" in m and "activity-by-tag on NN" in m for m in messages)


@pytest.mark.parametrize("tag", ["NONE", "``", "VBD"])
def test_known_tags_include_none_and_quote_marks(runtime, corpus_settings, tag):
    from headscope.analysis.corpus import CorpusAnalysis

    assert tag in CorpusAnalysis(runtime, corpus_settings).known_tags
