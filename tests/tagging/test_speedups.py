"""The fast tagging paths against NLTK's own tagger and the plain per-character alignment.

DensePerceptronTagger must give exactly NLTK's PerceptronTagger.tag, word for word, so every
check here compares with NLTK run on the same weights (or with a second, plain implementation).
"""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
import textwrap
from collections import defaultdict

import pytest
from nltk.tokenize import TreebankWordTokenizer

from headscope.cache import AnalysisCache
from headscope.tagging.nltk_tagger import (
    NO_WORD,
    DensePerceptronTagger,
    PosTagger,
    WordSpan,
    overlap_alignment,
    paper_alignment,
)
from tests.helpers import CORPUS, REPO

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
    ["x" * 300, "y"],
    ["0", "00", "000", "0000", "00000", "2024-01-01"],
]


@pytest.fixture(scope="module")
def pos_tagger():
    return PosTagger(cache_bytes=0)


@pytest.fixture(scope="module")
def nltk_tagger():
    from nltk.tag.perceptron import PerceptronTagger

    return PerceptronTagger(lang="eng")


@pytest.fixture(scope="module")
def sample_sentences(pos_tagger):
    """Every sentence of the sample as tagging.py splits it: Punkt, then Treebank."""
    text = CORPUS.read_text()
    return [
        pos_tagger.word_tokenizer.tokenize(text[start:end])
        for start, end in pos_tagger.sentence_splitter.span_tokenize(text)
    ]


def nltk_scores(tagger, features: dict[str, int]) -> dict[str, float]:
    """The sums of AveragedPerceptron.predict, as NLTK makes them."""
    scores: dict[str, float] = defaultdict(float)
    for feature, value in features.items():
        if feature not in tagger.model.weights or value == 0:
            continue
        for label, weight in tagger.model.weights[feature].items():
            scores[label] += value * weight
    return scores


def test_tags_equal_nltk_on_every_sentence_of_the_sample(pos_tagger, nltk_tagger, sample_sentences):
    assert len(sample_sentences) > 10_000
    for words in sample_sentences:
        assert pos_tagger.tagger.tag(words) == nltk_tagger.tag(words), words


def test_the_c_word_loop_tags_as_nltk_on_every_sentence_of_the_sample(
    pos_tagger, nltk_tagger, sample_sentences
):
    native = pos_tagger.tagger.native
    assert native is not None  # this machine has a C compiler
    want = [[tag for _, tag in nltk_tagger.tag(words)] for words in sample_sentences]
    assert native.tag_sentences(sample_sentences) == want  # all at once
    for words, tags in zip(sample_sentences[::50], want[::50], strict=True):
        assert native.tag_sentences([words]) == [tags]  # and one by one
    odd = [
        *ADVERSARIAL_SENTENCES,
        ["caf\u00e9", "x" * 5000, "\u00e9t\u00e9", "\U0001f642\U0001f642"],
    ]
    assert native.tag_sentences(odd) == [[tag for _, tag in nltk_tagger.tag(w)] for w in odd]


def test_words_the_c_loop_cannot_take_go_to_the_python_loop(pos_tagger, nltk_tagger):
    dense = pos_tagger.tagger
    for words in (["a", "lone \ud800 surrogate"], ["two\nlines", "here"]):
        assert dense.native.tag_sentences([words]) is None
        assert dense.tag_sentences([words]) == [[tag for _, tag in dense.tag(words)]]


def test_the_c_word_loop_decides_ties_and_float_order_as_nltk():
    from headscope.tagging.nltk_tagger import load_native_perceptron

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
    dense = DensePerceptronTagger(toy)
    native = load_native_perceptron(dense)
    assert native is not None
    for _ in range(500):
        sentences = [
            [rng.choice(vocabulary) for _ in range(rng.randint(0, 8))]
            for _ in range(rng.randint(1, 3))
        ]
        want = [[tag for _, tag in toy.tag(words)] for words in sentences]
        assert native.tag_sentences(sentences) == want, sentences
    order = toy_tagger(  # NLTK's order of additions decides (see the test above)
        {"bias": {"A": 0.1, "B": 0.6}, "i suffix x": {"A": 0.2}, "i word x": {"A": 0.3}},
        {"A", "B"},
    )
    assert load_native_perceptron(DensePerceptronTagger(order)).tag_sentences([["x"]]) == [["A"]]


@pytest.mark.parametrize(
    ("right", "wrong"),
    [('literal("i suffix ")', 'literal("i suffix")'), ("scores[l] > scores[tag]", "0")],
)
def test_a_c_word_loop_that_disagrees_is_never_used(
    pos_tagger, tmp_path, monkeypatch, caplog, right, wrong
):
    from headscope.tagging import nltk_tagger as tagging

    source = tagging.PERCEPTRON_SOURCE.read_text()
    assert right in source
    miscompiled = tmp_path / "perceptron_tagger.c"
    miscompiled.write_text(source.replace(right, wrong))
    monkeypatch.setattr(tagging, "PERCEPTRON_SOURCE", miscompiled)
    assert tagging.load_native_perceptron(pos_tagger.tagger, tmp_path / "cache") is None
    assert "disagrees with the Python loop" in caplog.text


def test_without_a_compiler_tagging_stays_in_python(pos_tagger, tmp_path, monkeypatch, caplog):
    from headscope.tagging import nltk_tagger as tagging

    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert tagging.load_native_perceptron(pos_tagger.tagger, tmp_path / "cache") is None
    assert "tagging in Python" in caplog.text


def test_features_and_scores_equal_nltk_float_for_float(pos_tagger, nltk_tagger, sample_sentences):
    fast = pos_tagger.tagger
    scored = 0
    for words in sample_sentences[::4] + ADVERSARIAL_SENTENCES:
        prev, prev2 = nltk_tagger.START
        context = nltk_tagger.START + [nltk_tagger.normalize(w) for w in words] + nltk_tagger.END
        for i, word in enumerate(words):
            tag = nltk_tagger.tagdict.get(word)
            if not tag:
                features = nltk_tagger._get_features(i, word, context, prev, prev2)
                names = fast.feature_names(i, word, context, prev, prev2)
                assert list(names) == list(features) and set(features.values()) == {1}
                expected = nltk_scores(nltk_tagger, features)
                scores = fast.scores(names).tolist()
                # Bit for bit: the same additions in the same order.
                assert scores == [expected[label] for label in fast.labels], word
                tag, _ = nltk_tagger.model.predict(features)
                assert fast.labels[scores.index(max(scores))] == tag
                scored += 1
            prev2, prev = prev, tag
    assert scored > 5_000


@pytest.mark.parametrize("words", ADVERSARIAL_SENTENCES, ids=lambda words: " ".join(words)[:30])
def test_adversarial_words_get_nltk_tags(pos_tagger, nltk_tagger, words):
    assert pos_tagger.tagger.tag(words) == nltk_tagger.tag(words)


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
    from nltk.tag.perceptron import PerceptronTagger

    tagger = PerceptronTagger(load=False)
    tagger.decode_json_params((weights, tagdict or {}, sorted(classes)))
    return tagger


def test_float_sums_in_nltk_order_decide_as_in_nltk():
    # Exactly, A's score equals B's (0.6) and the larger label B would win the tie. NLTK adds
    # A's weights in feature order (bias, i suffix, ..., i word): (0.1 + 0.2) + 0.3 gives
    # 0.6000000000000001 > 0.6, so NLTK picks A; in any other order the sum is 0.6 and B wins.
    weights = {
        "bias": {"A": 0.1, "B": 0.6},
        "i suffix x": {"A": 0.2},
        "i word x": {"A": 0.3},
    }
    toy = toy_tagger(weights, {"A", "B"})
    assert toy.tag(["x"]) == [("x", "A")]
    assert DensePerceptronTagger(toy).tag(["x"]) == [("x", "A")]


def test_ties_go_to_the_larger_label_and_unknown_features_score_zero():
    toy = toy_tagger({"bias": {"NN": 1.0, "VB": 1.0, "DT": 0.5}}, {"DT", "NN", "VB", "CC"})
    assert DensePerceptronTagger(toy).tag(["x"]) == toy.tag(["x"]) == [("x", "VB")]
    no_weights = toy_tagger({"unused": {"NN": 1.0}}, {"DT", "NN", "VB"})
    assert DensePerceptronTagger(no_weights).tag(["x"]) == no_weights.tag(["x"]) == [("x", "VB")]


def test_random_weights_full_of_ties_give_nltk_tags():
    rng = random.Random(0)
    classes = ["A", "B", "C", "D", "E"]
    vocabulary = ["a", "b", "c", "d", "ab", "ba", "cd"]
    context_names = ["i word", "i-1 word", "i+1 word", "i suffix", "i-2 word", "i+2 word"]
    weights = random_weights(rng, classes, vocabulary, context_names)
    toy = toy_tagger(weights, classes, tagdict={"d": "E"})
    dense = DensePerceptronTagger(toy)
    for _ in range(500):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(0, 8))]
        assert dense.tag(words) == toy.tag(words)


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


def test_alignment_equals_the_plain_loop_on_sample_texts(runtime, pos_tagger):
    paragraphs = [p for p in CORPUS.read_text().split("\n\n") if p.strip()]
    texts = paragraphs[:150] + ["\u00a0Tom\u2003ran .\u3000 Hi\x1c!", "a\tb\r\nc  d"]
    cases = [(text, runtime.encode(text).offsets) for text in texts]
    cases += [(" \n\t ", [(0, 1), (1, 3), (3, 4)]), ("", [])]
    for text, offsets in cases:
        words = pos_tagger.word_spans(text)
        assert overlap_alignment(text, words, offsets) == plain_overlap_alignment(
            text, words, offsets
        )
        paper_words = pos_tagger.paper_word_spans(text)
        assert paper_alignment(text, paper_words, offsets) == plain_paper_alignment(
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
        assert overlap_alignment(text, words, offsets) == plain_overlap_alignment(
            text, words, offsets
        ), (text, words, offsets)
        assert paper_alignment(text, words, offsets) == plain_paper_alignment(text, words, offsets)


ODD_TEXTS = [
    "",
    "   ",
    "He said \"no\" -- and (then) [left] {quietly} <now>... can't won't gonna",
    "``Quoted'' and \u201ccurly\u201d and \u2018single\u2019 quotes; 'tis 'em",
    "It cost $3.88, or 12,000 yen: 50% off! Wasn't it?! Mr. Smith's dog's toys.",
    "caf\u00e9 na\u00efve stra\u00dfe \U0001f642 \u65e5\u672c -- --- ---- a--b",
    "I'M GONNA WANNA GIMME LEMME 'TWAS D'YE MORE'N",
    # Letters `re` matches case-insensitively to ASCII ones: dotless ı, long ſ, Kelvin K.
    "GıMME 'TİS 'TWAſ 'tiſ CANNOT Cannot d'YE More'N wanna x Kelvin",
    "x" * 2000,
]


def test_words_and_sentences_equal_stock_nltk_without_match_timeouts(pos_tagger):
    import nltk
    from nltk.tokenize import PunktSentenceTokenizer

    from headscope.tagging.nltk_tagger import PUNKT_RESOURCE, treebank_without_match_timeouts

    # A fresh splitter of the kind the tagger loads: punkt_tab's English, else Punkt's defaults.
    try:
        nltk.data.find(PUNKT_RESOURCE)
        from nltk.tokenize.punkt import PunktTokenizer

        stock_sentences = PunktTokenizer("english")
    except LookupError:
        stock_sentences = PunktSentenceTokenizer()
    stock_words = TreebankWordTokenizer()
    text = CORPUS.read_text()
    spans = list(stock_sentences.span_tokenize(text))
    assert list(pos_tagger.sentence_splitter.span_tokenize(text)) == spans
    fast = treebank_without_match_timeouts()
    prechecked = pos_tagger.word_tokenizer
    for start, end in spans:
        words = stock_words.tokenize(text[start:end])
        assert fast.tokenize(text[start:end]) == words
        assert prechecked.tokenize(text[start:end]) == words
    for odd in ODD_TEXTS:
        assert fast.tokenize(odd) == stock_words.tokenize(odd), odd
        assert prechecked.tokenize(odd) == stock_words.tokenize(odd), odd
        assert list(pos_tagger.sentence_splitter.span_tokenize(odd)) == list(
            stock_sentences.span_tokenize(odd)
        )
    guarded = [
        name for name in dir(fast) if name.isupper() and "TimedPattern" in repr(getattr(fast, name))
    ]
    assert guarded == []


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


def test_prechecked_treebank_equals_stock_on_random_text(pos_tagger):
    stock = TreebankWordTokenizer()
    rng = random.Random(7)
    for _ in range(20_000):
        text = "".join(rng.choices(TREEBANK_PIECES, k=rng.randint(0, 12)))
        assert pos_tagger.word_tokenizer.tokenize(text) == stock.tokenize(text), repr(text)


def test_every_treebank_rule_has_its_precheck_and_no_precheck_is_stale():
    from headscope.tagging.nltk_tagger import (
        TREEBANK_NEEDS_ANY_CHAR,
        TREEBANK_NEEDS_LOWERED,
        PrecheckedTreebank,
        treebank_without_match_timeouts,
    )

    tokenizer = treebank_without_match_timeouts()
    prechecked = PrecheckedTreebank(tokenizer)
    rules = prechecked.before_padding + prechecked.ending_quotes + prechecked.contractions
    assert len(rules) == 26 and all(needs is not None for _, _, needs in rules)
    patterns = {pattern.pattern for pattern, _, _ in rules}
    assert patterns == set(TREEBANK_NEEDS_ANY_CHAR) | set(TREEBANK_NEEDS_LOWERED)
    # A rule the tables do not know (another nltk's) always runs.
    tokenizer.DOUBLE_DASHES = (__import__("re").compile("-{2}"), r" -- ")
    unknown = PrecheckedTreebank(tokenizer).before_padding[-1]
    assert unknown[2] is None
    assert PrecheckedTreebank(tokenizer).tokenize("a--b") == ["a", "--", "b"]


def with_cache(tagger: PosTagger, max_bytes: int) -> PosTagger:
    """The loaded tagger with a cache of its own."""
    clone = copy.copy(tagger)
    clone.cache = AnalysisCache(max_bytes)
    return clone


def test_word_span_cache_returns_what_tagging_computes_and_stays_bounded(pos_tagger):
    texts = ['Tom said, "I like the lake." Then he ran.', "She smiled. The end", "Hi", ""]
    uncached = [pos_tagger.word_spans(text) for text in texts]
    cached = with_cache(pos_tagger, 16 * 2**20)
    assert [cached.word_spans(text) for text in texts] == uncached  # misses
    assert [cached.word_spans(text) for text in texts] == uncached  # hits
    assert cached.cache.misses == 4 and cached.cache.hits == 4
    tiny = with_cache(pos_tagger, 10_000)
    for index in range(50):
        text = f"Story number {index} is here. It ends."
        assert tiny.word_spans(text) == pos_tagger.word_spans(text)
    assert 0 < len(tiny.cache) < 5 and tiny.cache.size_bytes <= 10_000


def test_nltk_imports_without_scipy_and_sklearn_which_still_import_later():
    script = textwrap.dedent(
        """
        import sys
        from headscope.tagging.nltk_tagger import PosTagger

        assert "scipy.stats" not in sys.modules and "sklearn" not in sys.modules
        assert sys.modules.get("scipy", 0) is not None and sys.modules.get("sklearn", 0) is not None

        import numpy as np
        import scipy.stats
        from sklearn.linear_model import LogisticRegression

        assert scipy.stats.norm.cdf(0.0) == 0.5
        fitted = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
        assert fitted.predict(np.array([[0.0], [3.0]])).tolist() == [0, 1]

        from nltk.tag.perceptron import PerceptronTagger

        words = ["The", "dog", "barked", "loudly", "at", "1984", "zorbles", "."]
        assert PosTagger(cache_bytes=0).tagger.tag(words) == PerceptronTagger().tag(words)
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
