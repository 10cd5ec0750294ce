"""Word spans to model-token tags: both alignments against plain per-character loops."""

from __future__ import annotations

import random

import pytest

from headscope.tagging.align import align
from headscope.tagging.base import NO_WORD, WordSpan
from tests.helpers import CORPUS


def test_paper_rule_rounds_the_middle_up():
    text = "ab cd."
    words = [WordSpan(0, 2, "X"), WordSpan(3, 6, "Y")]
    # Tokens: "ab" -> middle index 1 ('b'); " cd" (n=3) -> start+2 ('d'); "." (n=1) -> past end.
    offsets = [(0, 2), (2, 5), (5, 6)]
    assert align("paper", text, words, offsets) == ["X", "Y", "NONE"]
    assert align("overlap", text, words, offsets) == ["X", "Y", "Y"]


def test_overlap_ignores_whitespace_and_breaks_ties_to_the_first_word():
    text = "a b"
    words = [WordSpan(0, 1, "DT"), WordSpan(2, 3, "NN")]
    assert align("overlap", text, words, [(0, 3), (1, 2)]) == ["DT", "NONE"]


def plain_word_index_per_char(length, words):
    owner = [-1] * (length + 1)
    for index, word in enumerate(words):
        owner[word.start : word.end] = [index] * len(range(length + 1)[word.start : word.end])
    return owner


def plain_overlap_alignment(text, words, offsets):
    """The committed per-character loop, kept as the reference."""
    owner = plain_word_index_per_char(len(text), words)
    tags = []
    for start, end in offsets:
        counts: dict[int, int] = {}
        for position in range(start, end):
            if not text[position].isspace() and owner[position] >= 0:
                counts[owner[position]] = counts.get(owner[position], 0) + 1
        if not counts:
            tags.append(NO_WORD)
            continue
        best = max(counts.items(), key=lambda item: (item[1], -item[0]))[0]
        tags.append(words[best].tag)
    return tags


def plain_paper_alignment(text, words, offsets):
    owner = plain_word_index_per_char(len(text), words)
    middles = [min(start + (end - start + 1) // 2, len(text)) for start, end in offsets]
    return [words[owner[m]].tag if owner[m] >= 0 else NO_WORD for m in middles]


@pytest.fixture(scope="module")
def pos_tagger():
    from headscope.tagging.nltk_tagger import PosTagger

    return PosTagger(cache_bytes=0)


def test_alignment_equals_the_plain_loop_on_sample_texts(runtime, pos_tagger):
    paragraphs = [p for p in CORPUS.read_text().split("\n\n") if p.strip()]
    texts = paragraphs[:150] + ["\u00a0Tom\u2003ran .\u3000 Hi\x1c!", "a\tb\r\nc  d"]
    cases = [(text, runtime.encode(text).offsets) for text in texts]
    cases += [(" \n\t ", [(0, 1), (1, 3), (3, 4)]), ("", [])]
    for text, offsets in cases:
        words = pos_tagger.word_spans(text)
        assert align("overlap", text, words, offsets) == plain_overlap_alignment(
            text, words, offsets
        )
        paper_words = pos_tagger.paper_word_spans(text)
        assert align("paper", text, paper_words, offsets) == plain_paper_alignment(
            text, paper_words, offsets
        )
        assert pos_tagger.tag_tokens(text, offsets, "paper") == plain_paper_alignment(
            text, paper_words, offsets
        )


def test_alignment_equals_the_plain_loop_on_odd_words_and_tokens():
    """Overlapping, unordered, empty and whitespace-covering words; overlapping tokens."""
    rng = random.Random(1)
    alphabet = "ab .\n\u00a0\u2003c"
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        n = len(text)
        words = []
        for index in range(rng.randint(0, 6)):
            start = rng.randint(0, n)
            words.append(WordSpan(start, rng.randint(max(0, start - 2), n), f"T{index}"))
        offsets = []
        for _ in range(rng.randint(0, 8)):
            start = rng.randint(0, n)
            offsets.append((start, rng.randint(start, n)))
        assert align("overlap", text, words, offsets) == plain_overlap_alignment(
            text, words, offsets
        ), (text, words, offsets)
        assert align("paper", text, words, offsets) == plain_paper_alignment(text, words, offsets)
