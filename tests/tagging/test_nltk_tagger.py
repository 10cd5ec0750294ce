"""POS tags aligned to model tokens, with the real NLTK tagger and the real GPT-2 tokenizer; the
words and tags are stock NLTK's."""

from __future__ import annotations

import pytest

from headscope.tagging.nltk_tagger import PosTagger, align_words
from tests.helpers import CORPUS

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


@pytest.fixture(scope="module")
def pos_tagger():
    return PosTagger(cache_bytes=0)


def test_words_and_tags_equal_stock_nltk_on_the_whole_sample(pos_tagger):
    """Stock Punkt, stock Treebank on each sentence, stock perceptron: every word and tag, with
    the sped-up tokenizers and the C word loop in the tagger."""
    import nltk
    from nltk.tag.perceptron import PerceptronTagger
    from nltk.tokenize import TreebankWordTokenizer

    from headscope.tagging.nltk_tagger import sentence_splitter

    stock_tagger, stock_words = PerceptronTagger(lang="eng"), TreebankWordTokenizer()
    assert pos_tagger.perceptron.native is not None  # this machine builds the C word loop
    text = CORPUS.read_text()
    spans = list(sentence_splitter().span_tokenize(text))
    assert len(spans) > 10_000
    want = []
    for start, end in spans:
        words = stock_words.tokenize(text[start:end])
        located = align_words(text[start:end], words, start)
        for span, (_, tag) in zip(located, stock_tagger.tag(words), strict=True):
            if span is not None:
                want.append((*span, tag))
    got = [(word.start, word.end, word.tag) for word in pos_tagger.word_spans(text)]
    assert got == want
    assert pos_tagger.identity["nltk_version"] == nltk.__version__
