"""The perceptron's C word loop against stock NLTK: the same tags on real and on random weights
full of ties, and never used when it cannot be built or disagrees."""

from __future__ import annotations

import logging
import random

import pytest
from nltk.tag.perceptron import PerceptronTagger

from headscope.tagging import perceptron
from headscope.tagging.perceptron import Perceptron, load_native_perceptron
from tests.helpers import CORPUS

ADVERSARIAL_SENTENCES = [
    [],
    ["Hi"],
    ["."],
    [""],
    ["1984", "was", "a", "year", "."],
    ["It", "cost", "$", "3.88", "or", "12,000", "yen", "on", "the", "42nd", "day"],
    ["a", "well-known", "-5", "--", "x-", "-", "half-eaten", "pie"],
    ["Zyxqwv", "blorptastic", "qqq", "florbed", "the", "snarfle"],
    ["THE", "CAT", "SAT", "ON", "NASA", "'S", "MAT", "!"],
    ["``", "Hi", ",", "''", "she", "said", "."],
    ["café", "naïve", "straße", "🙂", "日本", "“", "”"],
    ["New York", "is", "big"],
    ["x" * 5000, "y", "\u00e9t\u00e9", "\U0001f642\U0001f642"],
    ["0", "00", "000", "0000", "00000", "2024-01-01"],
    ["a", "lone \ud800 surrogate", "\udc80"],
]


@pytest.fixture(scope="module")
def stock():
    return PerceptronTagger(lang="eng")


@pytest.fixture(scope="module")
def native(stock):
    loaded = load_native_perceptron(stock)
    assert loaded is not None  # this machine has a C compiler
    return loaded


def stock_tags(tagger, sentences):
    return [[tag for _, tag in tagger.tag(list(words))] for words in sentences]


def test_the_c_word_loop_tags_as_nltk_on_sample_and_odd_sentences(native, stock):
    from nltk.tokenize import TreebankWordTokenizer

    from headscope.tagging.nltk_tagger import sentence_splitter

    text = CORPUS.read_text()[:200_000]
    words = TreebankWordTokenizer()
    sentences = [words.tokenize(text[a:b]) for a, b in sentence_splitter().span_tokenize(text)]
    want = stock_tags(stock, sentences)
    assert native.tag_sentences(sentences) == want  # all at once
    for sentence, tags in zip(sentences[::25], want[::25], strict=True):
        assert native.tag_sentences([sentence]) == [tags]  # and one by one
    assert native.tag_sentences(ADVERSARIAL_SENTENCES) == stock_tags(stock, ADVERSARIAL_SENTENCES)


def test_words_the_c_loop_cannot_take_are_tagged_by_stock_nltk(native, stock):
    tagger = Perceptron(stock)
    assert tagger.native is not None
    sentences = [["two\nlines", "here"], ["and", "more"]]
    assert tagger.native.tag_sentences(sentences) is None
    assert tagger.tag_sentences(sentences) == stock_tags(stock, sentences)


def random_weights(rng, classes, vocabulary, names) -> dict:
    """Small weights full of ties: each (name, word) feature gives 1-3 labels one of a few
    values, and each previous tag one label; names spelled as NLTK's features spell them."""

    def spelled(name: str, word: str) -> str:
        return word[-3:] if "suffix" in name else word[:1] if "pref1" in name else word

    weights = {
        f"{name} {spelled(name, word)}": {
            label: rng.choice([0.1, 0.2, 0.3, -0.1, 0.7, 1.0])
            for label in rng.sample(classes, rng.randint(1, 3))
        }
        for name in names
        for word in vocabulary
    }
    for label in [*classes, "-START-", "-START2-"]:
        weights[f"i-1 tag {label}"] = {rng.choice(classes): rng.choice([0.1, 0.2, 0.3])}
    return weights


def toy_tagger(weights, classes, tagdict=None):
    tagger = PerceptronTagger(load=False)
    tagger.decode_json_params((weights, tagdict or {}, sorted(classes)))
    return tagger


def test_the_c_word_loop_decides_ties_and_float_order_as_nltk():
    rng = random.Random(1)
    classes = ["A", "B", "C", "D", "E"]
    vocabulary = ["a", "b", "c", "d", "ab", "ba", "cd", "\u00e9a", "a\u00e9\u00e9\u00e9"]
    names = ["i word", "i-1 word", "i+1 word", "i suffix", "i-2 word", "i+2 word", "i pref1",
             "i-1 suffix", "i+1 suffix"]  # fmt: skip
    weights = random_weights(rng, classes, vocabulary, names)
    for label in [*classes, "-START-", "-START2-"]:
        weights[f"i tag+i-2 tag {label} -START-"] = {rng.choice(classes): 0.2}
        weights[f"i-1 tag+i word {label} ab"] = {rng.choice(classes): 0.3}
    weights["bias"] = {"A": 0.1, "B": 0.6}
    toy = toy_tagger(weights, classes, tagdict={"d": "E", "cd": "Z"})
    native = load_native_perceptron(toy)
    assert native is not None
    for _ in range(500):
        sentences = [
            [rng.choice(vocabulary) for _ in range(rng.randint(0, 8))]
            for _ in range(rng.randint(1, 3))
        ]
        assert native.tag_sentences(sentences) == stock_tags(toy, sentences), sentences
    # Exactly, A's score equals B's (0.6) and the larger label B would win the tie. NLTK adds
    # A's weights in feature order (bias, i suffix, ..., i word): (0.1 + 0.2) + 0.3 gives
    # 0.6000000000000001 > 0.6, so NLTK picks A; in any other order the sum is 0.6 and B wins.
    order = toy_tagger(
        {"bias": {"A": 0.1, "B": 0.6}, "i suffix x": {"A": 0.2}, "i word x": {"A": 0.3}},
        {"A", "B"},
    )
    assert order.tag(["x"]) == [("x", "A")]
    assert load_native_perceptron(order).tag_sentences([["x"]]) == [["A"]]
    ties = toy_tagger({"bias": {"NN": 1.0, "VB": 1.0, "DT": 0.5}}, {"DT", "NN", "VB", "CC"})
    assert ties.tag(["x"]) == [("x", "VB")]
    assert load_native_perceptron(ties).tag_sentences([["x"]]) == [["VB"]]


@pytest.mark.parametrize(
    ("right", "wrong"),
    [('literal("i suffix ")', 'literal("i suffix")'), ("scores[l] > scores[tag]", "0")],
)
def test_a_c_word_loop_that_disagrees_is_never_used(
    stock, tmp_path, monkeypatch, caplog, right, wrong
):
    source = perceptron.PERCEPTRON_SOURCE.read_text()
    assert right in source
    miscompiled = tmp_path / "perceptron_tagger.c"
    miscompiled.write_text(source.replace(right, wrong))
    monkeypatch.setattr(perceptron, "PERCEPTRON_SOURCE", miscompiled)
    with caplog.at_level(logging.WARNING, logger="headscope.tagging"):
        tagger = Perceptron(stock, tmp_path / "cache")
    assert tagger.native is None
    assert "disagrees with stock NLTK" in caplog.text
    assert tagger.tag_sentences([["The", "dog", "ran"]]) == stock_tags(
        stock, [["The", "dog", "ran"]]
    )


def test_without_a_compiler_tagging_is_stock_nltk(stock, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger="headscope.tagging"):
        tagger = Perceptron(stock, tmp_path / "cache")
    assert tagger.native is None and tagger.stock is stock
    assert "tagging with stock NLTK" in caplog.text
