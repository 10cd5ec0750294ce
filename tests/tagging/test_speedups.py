"""The sped-up Punkt and Treebank against stock NLTK, and their gate: used only for the checked
nltk versions and when they agree with stock NLTK at load, stock NLTK otherwise."""

from __future__ import annotations

import logging
import os
import random
import re
import subprocess
import sys
import textwrap

import nltk
import pytest
from nltk.tokenize import TreebankWordTokenizer

from headscope.tagging import speedups
from headscope.tagging.nltk_tagger import PosTagger, sentence_splitter
from tests.helpers import CORPUS, REPO


@pytest.fixture(scope="module")
def fast():
    sped_up = speedups.tokenizers(nltk, sentence_splitter)
    assert sped_up.sped_up  # this nltk is in the range and the speed-ups agree with it
    return sped_up


ODD_TEXTS = [
    "",
    "   ",
    "He said \"no\" -- and (then) [left] {quietly} <now>... can't won't gonna",
    "``Quoted'' and \u201ccurly\u201d and \u2018single\u2019 quotes; 'tis 'em",
    "It cost $3.88, or 12,000 yen: 50% off! Wasn't it?! Mr. Smith's dog's toys.",
    "caf\u00e9 na\u00efve stra\u00dfe \U0001f642 \u65e5\u672c -- --- ---- a--b",
    "I'M GONNA WANNA GIMME LEMME 'TWAS D'YE MORE'N",
    # Letters `re` matches case-insensitively to ASCII ones: dotless ı, long ſ, Kelvin K.
    "GıMME 'TİS 'TWAſ 'tiſ CANNOT Cannot d'YE More'N wanna x Kelvin",
    "x" * 2000,
]


def test_sentences_and_words_equal_stock_nltk_on_the_sample_and_odd_texts(fast):
    stock_sentences, stock_words = sentence_splitter(), TreebankWordTokenizer()
    text = CORPUS.read_text()
    spans = list(stock_sentences.span_tokenize(text))
    assert list(fast.sentences.span_tokenize(text)) == spans
    for start, end in spans:
        assert fast.words.tokenize(text[start:end]) == stock_words.tokenize(text[start:end])
    for odd in ODD_TEXTS:
        assert fast.words.tokenize(odd) == stock_words.tokenize(odd), odd
        assert list(fast.sentences.span_tokenize(odd)) == list(stock_sentences.span_tokenize(odd))


def test_no_pattern_is_left_guarded(fast):
    unguarded = speedups.treebank_without_match_timeouts(nltk)
    guarded = [
        name
        for name in dir(unguarded)
        if name.isupper() and "TimedPattern" in repr(getattr(unguarded, name))
    ]
    assert guarded == []
    rules = fast.words.before_padding + fast.words.ending_quotes + fast.words.contractions
    assert not any("TimedPattern" in repr(pattern) for pattern, _, _ in rules)


# Pieces that the Treebank rules react to (quotes, punctuation, the contractions, letters `re`
# matches case-insensitively to ASCII), glued together at random.
TREEBANK_PIECES = [
    " ", "  ", "\n", "\t", "a", "x", "Tom", "1", "3.88", ".", "..", "...", ",", ":", ";", "?", "!",
    "'", "''", "\"", "`", "``", "(", ")", "[", "]", "{", "}", "<", ">", "--", "-", "@", "#", "$",
    "%", "&", "'s", "'S", "'m", "'d", "'ll", "'LL", "'re", "'ve", "n't", "N'T", "can", "CAN",
    "not", "NOT", "gim", "g\u0131m", "me", "ME", "gon", "got", "na", "ta", "lem", "more", "'n",
    "wan", "d", "'ye", "'t", "'T", "is", "\u0130S", "was", "WA\u017f", "\u017f", "\u212a",
    "\u201c", "\u201d", "\u2018", "\u2019",
]  # fmt: skip


def test_prechecked_treebank_equals_stock_on_random_text(fast):
    stock = TreebankWordTokenizer()
    rng = random.Random(7)
    for _ in range(20_000):
        text = "".join(rng.choices(TREEBANK_PIECES, k=rng.randint(0, 12)))
        assert fast.words.tokenize(text) == stock.tokenize(text), repr(text)


def test_every_treebank_rule_has_its_precheck_and_no_precheck_is_stale():
    tokenizer = speedups.treebank_without_match_timeouts(nltk)
    prechecked = speedups.PrecheckedTreebank(tokenizer)
    rules = prechecked.before_padding + prechecked.ending_quotes + prechecked.contractions
    assert len(rules) == 26 and all(needs is not None for _, _, needs in rules)
    patterns = {pattern.pattern for pattern, _, _ in rules}
    assert patterns == set(speedups.TREEBANK_NEEDS_ANY_CHAR) | set(speedups.TREEBANK_NEEDS_LOWERED)
    # A rule the tables do not know (another nltk's) always runs.
    tokenizer.DOUBLE_DASHES = (re.compile("-{2}"), r" -- ")
    unknown = speedups.PrecheckedTreebank(tokenizer).before_padding[-1]
    assert unknown[2] is None
    assert speedups.PrecheckedTreebank(tokenizer).tokenize("a--b") == ["a", "--", "b"]


def gate_log(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "headscope.tagging" and "speed-ups" in record.getMessage()
    ]


def test_an_nltk_outside_the_checked_range_tokenizes_stock(monkeypatch, caplog):
    monkeypatch.setattr(speedups, "NLTK_VERSIONS", ((3, 0), (3, 1)))
    with caplog.at_level(logging.INFO, logger="headscope.tagging"):
        chosen = speedups.tokenizers(nltk, sentence_splitter)
    assert not chosen.sped_up
    assert type(chosen.words) is TreebankWordTokenizer
    assert type(chosen.sentences) is type(sentence_splitter())
    assert "TimedPattern" in repr(chosen.words.PARENS_BRACKETS)  # nltk's own, guarded
    [line] = gate_log(caplog)
    assert nltk.__version__ in line and "3.0-3.1" in line


def test_speed_ups_that_disagree_with_stock_are_never_used(monkeypatch, caplog):
    # A precheck that skips the ? and ! rule where it would match: "?!" are never split off.
    needs = {**speedups.TREEBANK_NEEDS_ANY_CHAR, r"[?!]": "#"}
    monkeypatch.setattr(speedups, "TREEBANK_NEEDS_ANY_CHAR", needs)
    with caplog.at_level(logging.INFO, logger="headscope.tagging"):
        chosen = speedups.tokenizers(nltk, sentence_splitter)
    assert not chosen.sped_up and type(chosen.words) is TreebankWordTokenizer
    [line] = gate_log(caplog)
    assert "disagree" in line and "words of" in line


def test_speed_ups_that_fail_are_never_used(monkeypatch, caplog):
    def broken(_nltk):
        raise AttributeError("'TreebankWordTokenizer' object has no attribute 'PUNCTUATION'")

    monkeypatch.setattr(speedups, "treebank_without_match_timeouts", broken)
    with caplog.at_level(logging.INFO, logger="headscope.tagging"):
        chosen = speedups.tokenizers(nltk, sentence_splitter)
    assert not chosen.sped_up
    [line] = gate_log(caplog)
    assert "PUNCTUATION" in line


def test_the_tagger_tokenizes_with_the_speed_ups_and_tags_as_with_stock_nltk(monkeypatch):
    sped_up = PosTagger(cache_bytes=0)
    assert isinstance(sped_up.word_tokenizer, speedups.PrecheckedTreebank)
    monkeypatch.setattr(speedups, "NLTK_VERSIONS", ((3, 0), (3, 1)))
    stock = PosTagger(cache_bytes=0)
    assert type(stock.word_tokenizer) is TreebankWordTokenizer
    paragraphs = [p for p in CORPUS.read_text().split("\n\n") if p.strip()][:200]
    for text in paragraphs + ODD_TEXTS:
        assert sped_up.word_spans(text) == stock.word_spans(text)
        assert sped_up.paper_word_spans(text) == stock.paper_word_spans(text)


def test_word_span_cache_returns_what_tagging_computes_and_stays_bounded():
    texts = ['Tom said, "I like the lake." Then he ran.', "She smiled. The end", "Hi", ""]
    uncached = PosTagger(cache_bytes=0)
    expected = [uncached.word_spans(text) for text in texts]
    cached = PosTagger(cache_bytes=16 * 2**20)
    assert [cached.word_spans(text) for text in texts] == expected  # misses
    assert [cached.word_spans(text) for text in texts] == expected  # hits
    assert cached.cache.misses == 4 and cached.cache.hits == 4
    tiny = PosTagger(cache_bytes=10_000)
    for index in range(50):
        text = f"Story number {index} is here. It ends."
        assert tiny.word_spans(text) == uncached.word_spans(text)
    assert 0 < len(tiny.cache) < 5 and tiny.cache.size_bytes <= 10_000


def test_nltk_imports_without_scipy_and_sklearn_which_still_import_later():
    script = textwrap.dedent(
        """
        import sys
        from headscope.tagging.nltk_tagger import PosTagger

        tagger = PosTagger(cache_bytes=0)
        assert "scipy.stats" not in sys.modules and "sklearn" not in sys.modules
        assert sys.modules.get("scipy", 0) is not None and sys.modules.get("sklearn", 0) is not None

        import numpy as np
        import scipy.stats
        from sklearn.linear_model import LogisticRegression

        assert scipy.stats.norm.cdf(0.0) == 0.5
        fitted = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
        assert fitted.predict(np.array([[0.0], [3.0]])).tolist() == [0, 1]
        print("ok")
        """
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HEADSCOPE_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
