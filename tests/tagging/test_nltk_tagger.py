"""POS tags aligned to model tokens, with the real NLTK tagger and the real GPT-2 tokenizer."""

from __future__ import annotations

import pytest

from headscope.tagging.nltk_tagger import WordSpan, align_words, overlap_alignment, paper_alignment

STORY = 'Tom said, "I like the lake." Then he ran.\n\nShe smiled. The end'


def tagged(runtime, text, alignment="overlap"):
    encoded = runtime.encode(text)
    return [
        (text[start:end], tag)
        for (start, end), tag in zip(encoded.offsets, runtime.tags(encoded, alignment), strict=True)
    ]


def test_overlap_alignment_on_a_story(runtime):
    tokens = tagged(runtime, STORY)
    assert tokens[:4] == [("Tom", "NNP"), (" said", "VBD"), (",", ","), (' "', "``")]
    assert (" lake", "NN") in tokens  # sentence split first: the period is not glued on
    assert (" ran", "VBD") in tokens
    assert ("\n", "NONE") in tokens
    # '."' covers the period and the closing quote, one character each: the first word wins.
    assert ('."', ".") in tokens
    assert tokens[-1] == (" end", "NN")


def test_quotes_come_out_as_treebank_quote_tags(runtime):
    tokens = tagged(runtime, 'She said "yes" to him.')
    tags = dict(tokens)
    assert tags[' "'] == "``"
    assert tags['"'] == "''"


def test_paper_alignment_differs_on_punctuation(runtime):
    text = 'Tom said, "I like the lake." Then he ran. She smiled.'
    ours = tagged(runtime, text)
    paper = tagged(runtime, text, "paper")
    assert len(ours) == len(paper)
    ours_tags = dict(ours)
    paper_tags = dict(paper)
    # One-character tokens take the tag of the character after them under the paper's rule.
    assert ours_tags[","] == ","
    assert paper_tags[","] == "NONE"  # lands on the following space
    # Whole-text Treebank glues sentence-final periods onto the word: "ran." is one word.
    assert ours_tags[" ran"] == "VBD"
    assert paper_tags["."] != "."


def test_paper_rule_rounds_the_middle_up():
    text = "ab cd."
    words = [WordSpan(0, 2, "X"), WordSpan(3, 6, "Y")]
    # Tokens: "ab" -> middle index 1 ('b'); " cd" (n=3) -> start+2 ('d'); "." (n=1) -> past end.
    offsets = [(0, 2), (2, 5), (5, 6)]
    assert paper_alignment(text, words, offsets) == ["X", "Y", "NONE"]
    assert overlap_alignment(text, words, offsets) == ["X", "Y", "Y"]


def test_overlap_ignores_whitespace_and_breaks_ties_to_the_first_word():
    text = "a b"
    words = [WordSpan(0, 1, "DT"), WordSpan(2, 3, "NN")]
    assert overlap_alignment(text, words, [(0, 3), (1, 2)]) == ["DT", "NONE"]


@pytest.mark.parametrize(
    "text",
    ["``Hi,'' she said.", "It's Tom's ball...", "Wait -- what?!", "“Curly” quotes", "a\tb\r\nc"],
)
def test_odd_text_always_gets_one_tag_per_token(runtime, text):
    encoded = runtime.encode(text)
    tags = runtime.tags(encoded)
    assert len(tags) == len(encoded.ids)
    assert all(isinstance(tag, str) and tag for tag in tags)


def test_align_words_maps_converted_quotes_back():
    text = 'He said "no".'
    spans = align_words(text, ["He", "said", "``", "no", "''", "."])
    assert [text[a:b] for a, b in spans] == ["He", "said", '"', "no", '"', "."]
    assert align_words("abc", ["zzz"]) == [None]
