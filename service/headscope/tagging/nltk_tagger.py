"""Penn Treebank POS tags (NLTK) for words, and their alignment to model tokens.

Default pipeline ("overlap"): split sentences (Punkt), split words with the Treebank tokenizer per
sentence, tag each sentence with NLTK's averaged perceptron, then give each model token the tag
of the word its non-whitespace characters overlap most.

The paper's pipeline ("paper"), kept for comparison: Treebank over the whole text at once, which
glues every sentence-final period but the last onto its word ("lake." tagged NN), and each token
takes the tag of its middle character rounded up, which lands one-character tokens such as "."
and "," on the following space.

The perceptron runs on NLTK's own weights, copied into a matrix (DensePerceptronTagger): the same
tags as NLTK's PerceptronTagger, several times faster. A PosTagger keeps the texts it tagged last.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import itertools
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from headscope.cache import AnalysisCache
from headscope.errors import StartupError
from headscope.native import build as native_build


@contextlib.contextmanager
def _hidden_modules(names: Sequence[str]) -> Iterator[None]:
    """Make `import name` raise ImportError inside the block, for names not imported yet."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # None in sys.modules: ImportError
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


# nltk/__init__ imports nltk.collocations, nltk.classify and nltk.parse, whose optional extras
# try-import scipy.stats and sklearn (with pandas): about 2 s and 120 MB at startup, for
# association measures, SklearnClassifier and TransitionParser, none of which headscope uses.
# Each of those imports sits in a `try ... except ImportError` with a fallback, so with the two
# packages hidden nltk imports in a fraction of the time. They are hidden for this one import
# only: a later `import sklearn` (the sklearn probe fit) imports the real packages. Where they
# are imported already, nothing is hidden and nothing changes.
# Imported on first use, not with this module: a server whose tagging runs in a child process
# (headscope.tagging.child) never loads nltk itself.
@functools.cache
def _import_nltk():
    with _hidden_modules(("scipy", "sklearn")):
        import nltk
        import nltk.tag.perceptron
        import nltk.tokenize
    return nltk


if TYPE_CHECKING:
    from nltk.tag.perceptron import PerceptronTagger
    from nltk.tokenize import PunktSentenceTokenizer, TreebankWordTokenizer

log = logging.getLogger("headscope.tagging")

TAGGER_PACKAGE = "averaged_perceptron_tagger_eng"
TAGGER_RESOURCE = f"taggers/{TAGGER_PACKAGE}/"
PUNKT_RESOURCE = "tokenizers/punkt_tab/english/"
NO_WORD = "NONE"
# Bytes of tagged texts kept by a PosTagger (LRU): a default corpus request of 100 sequences of
# 512 tokens takes about 2 MB.
WORD_SPAN_CACHE_BYTES = 16 * 2**20
# In a str pattern \s matches exactly the characters str.isspace() accepts.
_WHITESPACE = re.compile(r"\s+")
# Treebank rewrites double quotes as `` and ''; in the text they may be any of these.
QUOTE_FORMS = {"``": ('"', "``", "''", "“"), "''": ('"', "''", "``", "”")}


@dataclass(frozen=True)
class WordSpan:
    start: int
    end: int
    tag: str


def _offline() -> bool:
    return any(os.environ.get(name) == "1" for name in ("HF_HUB_OFFLINE", "HEADSCOPE_OFFLINE"))


def ensure_tagger_data() -> str:
    """Return the tagger's folder; download it on first use where the network allows."""
    nltk = _import_nltk()
    try:
        return str(nltk.data.find(TAGGER_RESOURCE))
    except LookupError:
        pass
    if not _offline():
        log.info("NLTK tagger %s not found; downloading it", TAGGER_PACKAGE)
        try:
            nltk.download(TAGGER_PACKAGE, quiet=True, raise_on_error=True)
            return str(nltk.data.find(TAGGER_RESOURCE))
        except Exception as err:  # noqa: BLE001 - turned into one startup message below
            log.warning("Downloading %s failed: %s", TAGGER_PACKAGE, err)
    raise StartupError(
        f"NLTK's English POS tagger '{TAGGER_PACKAGE}' is not installed (looked in "
        f"{', '.join(nltk.data.path)}) and could not be downloaded. Set NLTK_DATA to a folder "
        f"that contains {TAGGER_RESOURCE}, or run: python -m nltk.downloader {TAGGER_PACKAGE}"
    )


def align_words(text: str, words: Sequence[str], offset: int = 0) -> list[tuple[int, int] | None]:
    """Character spans of Treebank words in `text`, searching left to right.

    Treebank rewrites some characters (quotes), so nltk's own span_tokenize can fail on odd
    input; a word that cannot be found gets None instead of failing the whole text.
    """
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for word in words:
        best: tuple[int, int] | None = None
        for form in QUOTE_FORMS.get(word, (word,)):
            position = text.find(form, cursor)
            if position >= 0 and (best is None or position < best[0]):
                best = (position, position + len(form))
        if best is None:
            spans.append(None)
            continue
        cursor = best[1]
        spans.append((best[0] + offset, best[1] + offset))
    return spans


class DensePerceptronTagger:
    """NLTK's averaged perceptron tagger with its weights in one matrix: the same tags, faster.

    NLTK scores a word with dict loops (for each of its features in order, add the feature's
    weight for each label to that label's score) and takes the label with the largest
    (score, label). Here every feature is a row of a [feature, label] float64 matrix and a word's
    rows are added up in NLTK's feature order, so each label's score is the very float NLTK
    computes: a label the feature has no weight for gets + 0.0, which changes nothing. Labels are
    stored in descending order, so argmax, which keeps the first of equal scores, picks the
    largest label as NLTK does.
    """

    def __init__(self, tagger: PerceptronTagger) -> None:
        self.START, self.END = tagger.START, tagger.END
        # NLTK's normalize, bound to a weightless tagger: holding `tagger` itself would keep its
        # dict of weights (about 40 MB) alive next to the matrix.
        self.normalize = type(tagger)(load=False).normalize
        self.tagdict: dict[str, str] = tagger.tagdict
        self.classes: set[str] = tagger.classes
        # NLTK takes the max over the model's classes; weights for any other label never count.
        self.labels = sorted(tagger.model.classes, reverse=True)
        column = {label: index for index, label in enumerate(self.labels)}
        features = tagger.model.weights
        # Copies of NLTK's feature names rather than the names themselves: they are allocated
        # among NLTK's nested dicts, and while one of them lives the memory blocks of that
        # tagger cannot go back to the system (about 20 MB more resident memory).
        self.row_of = {(feature + " ")[:-1]: row for row, feature in enumerate(features)}
        self.weights = np.zeros((len(features), len(self.labels)))  # [feature, label]
        for row, label_weights in enumerate(features.values()):
            for label, weight in label_weights.items():
                if label in column:
                    self.weights[row, column[label]] = weight
        self.native: NativePerceptron | None = None  # see load_native_perceptron

    def feature_names(
        self, i: int, word: str, context: Sequence[str], prev: str, prev2: str
    ) -> tuple[str, ...]:
        """NLTK's PerceptronTagger._get_features, in its order. Each name occurs once (their
        prefixes differ), so NLTK's feature values are all 1 and only the names matter."""
        i += len(self.START)
        return (
            "bias",
            f"i suffix {word[-3:]}",
            f"i pref1 {word[:1]}",
            f"i-1 tag {prev}",
            f"i-2 tag {prev2}",
            f"i tag+i-2 tag {prev} {prev2}",
            f"i word {context[i]}",
            f"i-1 tag+i word {prev} {context[i]}",
            f"i-1 word {context[i - 1]}",
            f"i-1 suffix {context[i - 1][-3:]}",
            f"i-2 word {context[i - 2]}",
            f"i+1 word {context[i + 1]}",
            f"i+1 suffix {context[i + 1][-3:]}",
            f"i+2 word {context[i + 2]}",
        )

    def scores(self, feature_names: Sequence[str]) -> np.ndarray:
        """Each label's score, in `labels` order: NLTK's sums, float for float."""
        rows = [row for row in map(self.row_of.get, feature_names) if row is not None]
        if not rows:
            return np.zeros(len(self.labels))
        # Reducing over the outer axis adds the rows one after another (numpy's pairwise
        # summation applies only along the contiguous axis): NLTK's order of additions.
        return np.add.reduce(self.weights.take(rows, axis=0), axis=0)

    def tag(self, words: Sequence[str]) -> list[tuple[str, str]]:
        """PerceptronTagger.tag: greedy, left to right, each tag feeding the next word's features;
        words in NLTK's tag dictionary take its tag unscored."""
        prev, prev2 = self.START
        context = [*self.START, *(self.normalize(word) for word in words), *self.END]
        tagged = []
        for i, word in enumerate(words):
            tag = self.tagdict.get(word)
            if not tag:
                scores = self.scores(self.feature_names(i, word, context, prev, prev2))
                tag = self.labels[int(scores.argmax())]
            tagged.append((word, tag))
            prev2 = prev
            prev = tag
        return tagged

    def tag_sentences(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        """`tag`'s tags for each sentence: in C where the native loop is loaded."""
        if self.native is not None:
            tags = self.native.tag_sentences(sentences)
            if tags is not None:
                return tags
        return [[tag for _, tag in self.tag(words)] for words in sentences]


PERCEPTRON_SOURCE = Path(__file__).parents[1] / "native" / "perceptron_tagger.c"
# No fast-math or reassociation flags: every score is IEEE double additions in NLTK's order.
PERCEPTRON_FLAGS = ("-O2", "-fPIC", "-shared")


class NativePerceptron:
    """DensePerceptronTagger's word loop in C (perceptron_tagger.c): the same tags.

    Python builds 14 feature names per word and looks each up among 75,000, about 10 µs a
    scored word; the C loop hashes the same names piece by piece and adds the same rows in the
    same order, for all the sentences of a text in one call. Checked against the Python loop
    when loaded; a build that disagrees is never used.
    """

    def __init__(self, library: ctypes.CDLL, dense: DensePerceptronTagger) -> None:
        self.dense = dense
        self._library = library
        library.headscope_tagger_new.restype = ctypes.c_void_p
        library.headscope_tagger_new.argtypes = [
            ctypes.c_char_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
            ctypes.c_int32, ctypes.c_char_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_char_p,
            ctypes.c_int64,
        ]  # fmt: skip
        library.headscope_tagger_tag.restype = ctypes.c_int
        library.headscope_tagger_tag.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64, ctypes.c_char_p, ctypes.c_int64,
            ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        library.headscope_tagger_free.argtypes = [ctypes.c_void_p]
        # A name holding a newline can never be asked for (words hold no whitespace).
        names = [(name, row) for name, row in dense.row_of.items() if "\n" not in name]
        keys = "\n".join(name for name, _ in names).encode()
        self._rows = np.array([row for _, row in names], dtype=np.int32)
        self._weights = np.ascontiguousarray(dense.weights, dtype=np.float64)
        extra = sorted({tag for tag in dense.tagdict.values() if tag} - set(dense.labels))
        self.tags = [*dense.labels, *extra, *dense.START]
        self._tag_index = {tag: index for index, tag in enumerate(self.tags)}
        padding = "\n".join([*dense.START, *dense.END]).encode()
        tags = "\n".join(self.tags).encode()
        self._handle = library.headscope_tagger_new(
            keys, len(keys), self._rows.ctypes.data, len(names), self._weights.ctypes.data,
            len(dense.labels), tags, len(tags), len(self.tags), padding, len(padding),
        )  # fmt: skip
        if not self._handle:
            raise OSError("the native tagger could not be set up (out of memory?)")

    def __del__(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._library.headscope_tagger_free(handle)

    def tag_sentences(self, sentences: Sequence[Sequence[str]]) -> list[list[str]] | None:
        """Each sentence's tags, or None for words it cannot take (the Python loop then)."""
        words = [word for sentence in sentences for word in sentence]
        if not words:
            return [[] for _ in sentences]
        dense, tag_index = self.dense, self._tag_index
        normalized = [dense.normalize(word) for word in words]
        fixed = []
        for word in words:
            tag = dense.tagdict.get(word)
            fixed.append(tag_index.get(tag, -2) if tag else -1)  # -2: a tag not in the table
        try:
            raw = "\n".join(words).encode()
            normal = "\n".join(normalized).encode()
        except UnicodeEncodeError:
            return None  # lone surrogates
        if (
            -2 in fixed
            or raw.count(b"\n") != len(words) - 1
            or normal.count(b"\n") != len(words) - 1
        ):
            return None
        lengths = np.array([len(sentence) for sentence in sentences], dtype=np.int32)
        fixed_array = np.array(fixed, dtype=np.int32)
        out = np.empty(len(words), dtype=np.int32)
        status = self._library.headscope_tagger_tag(
            self._handle, raw, len(raw), normal, len(normal), lengths.ctypes.data,
            len(sentences), fixed_array.ctypes.data, out.ctypes.data,
        )  # fmt: skip
        if status != 0:
            return None
        tags = [self.tags[index] for index in out.tolist()]
        result, start = [], 0
        for sentence in sentences:
            result.append(tags[start : start + len(sentence)])
            start += len(sentence)
        return result

    def check(self) -> None:
        """Compare with the Python loop on sentences that touch every corner (raises if not)."""
        sentences = [
            ["The", "dog", "ran", "to", "the", "park", "."],
            ["``", "Hi", ",", "''", "she", "said", ",", "and", "Lily", "smiled", "."],
            ["1984", "was", "a", "well-known", "-5", "year", "of", "12,000", "x-rays", "!"],
            ["caf\u00e9", "na\u00efve", "\U0001f642", "\u65e5\u672c\u8a9e", "stra\u00dfe"],
            ["Zyxqwv", "blorptastic", "florbed", "the", "snarfle", "x" * 300, "", "a"],
            [],
            ["Tom"],
        ]
        want = [[tag for _, tag in self.dense.tag(words)] for words in sentences]
        if self.tag_sentences(sentences) != want:
            raise NativeTaggerMismatch("the native tagger disagrees with the Python loop")


class NativeTaggerMismatch(Exception):
    pass


def load_native_perceptron(
    dense: DensePerceptronTagger, cache_dir: Path | None = None
) -> NativePerceptron | None:
    """The C word loop for `dense`, built on first use; None (the Python loop) without a C
    compiler or if the build fails or disagrees."""

    def checked(library: ctypes.CDLL, _path: Path) -> NativePerceptron:
        native = NativePerceptron(library, dense)
        native.check()
        return native

    return native_build.load(
        "perceptron", PERCEPTRON_SOURCE, PERCEPTRON_FLAGS, checked, cache_dir=cache_dir,
        instead="tagging in Python",
    )  # fmt: skip


def _unguarded(pattern):
    """The compiled pattern inside nltk's ReDoS guard (nltk.redos.TimedPattern), else `pattern`."""
    return getattr(pattern, "_rx", pattern)


def treebank_without_match_timeouts() -> TreebankWordTokenizer:
    """NLTK's Treebank word tokenizer on its own compiled patterns, minus nltk.redos's wrapper.

    nltk wraps every regex in a guard that runs each match under a wall-clock timeout, there to
    stop caller-supplied patterns from backtracking forever. The Treebank rules are NLTK's fixed
    patterns, linear in the text, and texts here are bounded by max_tokens; the wrapper was half
    of the tokenizer's time (117 vs 62 µs a sentence). Same engine, patterns and order: the same
    words (tested on every sentence of the sample). Where nltk has no guard, nothing changes.
    """
    tokenizer = _import_nltk().tokenize.TreebankWordTokenizer()
    for name in dir(tokenizer):
        rules = getattr(tokenizer, name)
        if not name.isupper() or not isinstance(rules, (list, tuple)) or not rules:
            continue
        if isinstance(rules, tuple) and len(rules) == 2 and isinstance(rules[1], str):
            setattr(tokenizer, name, (_unguarded(rules[0]), rules[1]))  # one (pattern, repl)
        elif all(isinstance(rule, tuple) and len(rule) == 2 for rule in rules):
            setattr(tokenizer, name, [(_unguarded(rule), repl) for rule, repl in rules])
        else:
            setattr(tokenizer, name, [_unguarded(rule) for rule in rules])
    return tokenizer


# What a Treebank rule needs in the text to match at all, by the rule's pattern: characters (any
# one of them), or for the case-insensitive contractions a piece of the word in lower case whose
# letters have no case-insensitive equivalents other than their ASCII upper case (no i, k or s,
# which `re` also matches to "ı", "K" and "ſ"). A rule whose pattern is not listed always runs.
TREEBANK_NEEDS_ANY_CHAR = {
    r"^\"": '"',
    r"(``)": "`",
    r"([ \(\[{<])(\"|\'{2})": "\"'",
    r"([:,])([^\d])": ":,",
    r"([:,])$": ":,",
    r"\.\.\.": ".",
    r"[;@#$%&]": ";@#$%&",
    r"([^\.])(\.)([\]\)}>" + '"' + r"\']*)\s*$": ".",
    r"[?!]": "?!",
    r"([^'])' ": "'",
    r"[\]\[\(\)\{\}\<\>]": "][(){}<>",
    r"--": "-",
    r"''": "'",
    r'"': '"',
    r"([^' ])('[sS]|'[mM]|'[dD]|') ": "'",
    r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ": "'",
}
TREEBANK_NEEDS_LOWERED = {
    r"(?i)\b(can)(?#X)(not)\b": "cannot",
    r"(?i)\b(d)(?#X)('ye)\b": "d'ye",
    r"(?i)\b(gim)(?#X)(me)\b": "mme",
    r"(?i)\b(gon)(?#X)(na)\b": "gonna",
    r"(?i)\b(got)(?#X)(ta)\b": "gotta",
    r"(?i)\b(lem)(?#X)(me)\b": "lemme",
    r"(?i)\b(more)(?#X)('n)\b": "more'n",
    r"(?i)\b(wan)(?#X)(na)(?=\s)": "wanna",
    r"(?i) ('t)(?#X)(is)\b": "'t",
    r"(?i) ('t)(?#X)(was)\b": "'tw",
}


def _char_test(chars: str | None) -> str | frozenset[str] | None:
    """One character as itself (a substring test), several as a set (one pass over the text)."""
    return chars if chars is None or len(chars) == 1 else frozenset(chars)


class PrecheckedTreebank:
    """TreebankWordTokenizer.tokenize, rule for rule, skipping the rules that cannot match.

    A sentence of ordinary prose meets about 26 rules, of which 2-4 can match; each regex call
    costs 1-3 µs even when it finds nothing, a substring test tens of ns. A rule runs whenever
    the text holds what its pattern needs (TREEBANK_NEEDS_*), so the words are NLTK's: tested
    on every sentence of the sample, odd strings, and random ones.
    """

    def __init__(self, tokenizer: TreebankWordTokenizer) -> None:
        def checked(rules):
            return [
                (pattern, replacement, _char_test(TREEBANK_NEEDS_ANY_CHAR.get(pattern.pattern)))
                for pattern, replacement in rules
            ]

        self.before_padding = checked(
            [*tokenizer.STARTING_QUOTES, *tokenizer.PUNCTUATION, tokenizer.PARENS_BRACKETS,
             tokenizer.DOUBLE_DASHES]
        )  # fmt: skip
        self.ending_quotes = checked(tokenizer.ENDING_QUOTES)
        self.contractions = [
            (pattern, r" \1 \2 ", TREEBANK_NEEDS_LOWERED.get(pattern.pattern))
            for pattern in [*tokenizer.CONTRACTIONS2, *tokenizer.CONTRACTIONS3]
        ]

    @staticmethod
    def _apply(rules, text: str) -> str:
        for pattern, replacement, needs in rules:
            if needs is not None and (
                needs not in text if type(needs) is str else needs.isdisjoint(text)
            ):
                continue  # nothing it needs is in the text: it would change nothing
            text = pattern.sub(replacement, text)
        return text

    def tokenize(self, text: str) -> list[str]:
        text = self._apply(self.before_padding, text)
        text = self._apply(self.ending_quotes, " " + text + " ")
        lowered = text.lower()
        for pattern, replacement, needs in self.contractions:
            if needs is None or needs in lowered:
                text = pattern.sub(replacement, text)
                lowered = text.lower()
        return text.split()


@functools.cache
def _unguarded_punkt_token() -> type:
    """Punkt's token class with its pattern properties on the same compiled patterns, unguarded.

    Punkt builds a token for each word (twice per text) and types it with a guarded `sub`: 3.3
    against 0.45 µs a call, a quarter of the tagger process's time. The properties are NLTK's
    own code, copied where it names a module-level pattern.
    """
    from nltk.tokenize import punkt

    non_punct = _unguarded(punkt._re_non_punct)

    class UnguardedPunktToken(punkt.PunktToken):
        _RE_ELLIPSIS = _unguarded(punkt.PunktToken._RE_ELLIPSIS)
        _RE_NUMERIC = _unguarded(punkt.PunktToken._RE_NUMERIC)
        _RE_INITIAL = _unguarded(punkt.PunktToken._RE_INITIAL)
        _RE_ALPHA = _unguarded(punkt.PunktToken._RE_ALPHA)

        @property
        def is_non_punct(self):
            return non_punct.search(self.type)

    return UnguardedPunktToken


def _drop_match_timeouts(splitter: PunktSentenceTokenizer) -> None:
    """The same for the patterns a Punkt splitter uses: its language variables' (per instance)
    and its tokens' (a subclass with unguarded patterns, which the splitter builds instead)."""
    lang_vars = getattr(splitter, "_lang_vars", None)
    for build, slot in (
        ("_word_tokenizer_re", "_re_word_tokenizer"),
        ("period_context_re", "_re_period_context"),
    ):
        if lang_vars is not None and hasattr(lang_vars, build):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(lang_vars, slot, _unguarded(getattr(lang_vars, build)()))
    if lang_vars is not None and hasattr(lang_vars, "re_boundary_realignment"):
        # A class attribute, and the class has __slots__: the instance moves to a subclass that
        # holds the unguarded pattern (same slots, so it keeps its state).
        lang_vars.__class__ = type(
            type(lang_vars).__name__,
            (type(lang_vars),),
            {
                "__slots__": (),
                "re_boundary_realignment": _unguarded(lang_vars.re_boundary_realignment),
            },
        )
    if getattr(splitter, "_Token", None) is not None:
        from nltk.tokenize import punkt

        if splitter._Token is punkt.PunktToken:
            splitter._Token = _unguarded_punkt_token()


class PosTagger:
    """NLTK sentence splitter, Treebank word tokenizer and perceptron tagger, loaded once."""

    def __init__(
        self, cache_bytes: int = WORD_SPAN_CACHE_BYTES, native_cache: Path | None = None
    ) -> None:
        # The corpus endpoints tag the same sequences on every request (another tag, another
        # head) and clients send one text to several endpoints, while tagging is the slowest
        # step that holds the GIL: tagged texts are kept, in compact arrays.
        self.cache = AnalysisCache(cache_bytes)
        tagger_folder = ensure_tagger_data()
        nltk = _import_nltk()
        # NLTK's own loader reads the weights; its dict of dicts is dropped once copied.
        self.tagger = DensePerceptronTagger(nltk.tag.perceptron.PerceptronTagger(lang="eng"))
        # The word loop in C where this machine can build it (into native_cache), else Python.
        self.tagger.native = load_native_perceptron(self.tagger, native_cache)
        try:
            nltk.data.find(PUNKT_RESOURCE)
            from nltk.tokenize.punkt import PunktTokenizer

            self.sentence_splitter = PunktTokenizer("english")
            splitter_name = "punkt_tab (english)"
        except LookupError:
            self.sentence_splitter = nltk.tokenize.PunktSentenceTokenizer()
            splitter_name = "PunktSentenceTokenizer (untrained defaults)"
        _drop_match_timeouts(self.sentence_splitter)
        self.word_tokenizer = PrecheckedTreebank(treebank_without_match_timeouts())
        weights = sorted(
            os.path.join(tagger_folder, name)
            for name in os.listdir(tagger_folder)
            if name.endswith(".json")
        )
        digest = hashlib.sha256()
        for path in weights:
            with open(path, "rb") as handle:
                digest.update(handle.read())
        self.identity = {
            "tagger": f"nltk {TAGGER_PACKAGE}",
            "tagger_sha256": digest.hexdigest(),
            "sentence_splitter": splitter_name,
            "word_tokenizer": "TreebankWordTokenizer",
            "nltk_version": nltk.__version__,
        }

    def _tag_chunks(
        self, text: str, chunks: Iterable[tuple[int, int]]
    ) -> tuple[list[tuple[int, int]], list[str]]:
        """The tagged words of each text[start:end], as ((start, end) list, tag list)."""
        pieces = [(start, text[start:end]) for start, end in chunks]
        sentences = [self.word_tokenizer.tokenize(chunk) for _, chunk in pieces]
        bounds: list[tuple[int, int]] = []
        tags: list[str] = []
        for (start, chunk), words, sentence_tags in zip(
            pieces, sentences, self.tagger.tag_sentences(sentences), strict=True
        ):
            for span, tag in zip(align_words(chunk, words, start), sentence_tags, strict=True):
                if span is not None:
                    bounds.append(span)
                    tags.append(tag)
        return bounds, tags

    def word_spans(self, text: str) -> list[WordSpan]:
        """Tagged words of `text`, sentence by sentence."""
        bounds, tags = self._word_span_arrays(text)
        return [
            WordSpan(start, end, tag)
            for (start, end), tag in zip(bounds.tolist(), tags, strict=True)
        ]

    def _word_span_arrays(self, text: str) -> tuple[np.ndarray, list[str]]:
        """The tagged words as ([word, 2] start/end array, tags), cached by text."""

        def compute() -> dict:
            bounds, tags = self._tag_chunks(text, self.sentence_splitter.span_tokenize(text))
            return {"bounds": _bounds(bounds, len(bounds)), "tags": tags}

        cached = self.cache.get_or_compute((text,), compute)
        return cached["bounds"], cached["tags"]

    def paper_word_spans(self, text: str) -> list[WordSpan]:
        """Tagged words of `text` as the paper made them: one Treebank pass over the whole text."""
        bounds, tags = self._tag_chunks(text, [(0, len(text))])
        return [WordSpan(start, end, tag) for (start, end), tag in zip(bounds, tags, strict=True)]

    @property
    def classes(self) -> set[str]:
        """Every tag the tagger can give a word."""
        return self.tagger.classes

    def submit_tag_tokens(
        self, text: str, offsets: Sequence[tuple[int, int]], alignment: str = "overlap"
    ) -> Future:
        """tag_tokens, done now, as a Future (TaggerProcess's answers come later)."""
        future: Future = Future()
        try:
            future.set_result(self.tag_tokens(text, offsets, alignment))
        except Exception as err:  # noqa: BLE001 - raised again by result(), as tag_tokens would
            future.set_exception(err)
        return future

    def close(self) -> None:
        """Nothing to stop (TaggerProcess stops its child)."""

    def prefetch(self, text: str) -> bool:
        """Nothing to do ahead of time in this process (TaggerProcess tags ahead in its child)."""
        return False

    def tag_tokens(
        self, text: str, offsets: Sequence[tuple[int, int]], alignment: str = "overlap"
    ) -> list[str]:
        """One tag per model token, given the tokens' character offsets into `text`."""
        if alignment == "paper":
            return paper_alignment(text, self.paper_word_spans(text), offsets)
        return _overlap_tags(text, *self._word_span_arrays(text), offsets)


def _bounds(spans: Iterable[tuple[int, int]], count: int) -> np.ndarray:
    """`count` (start, end) pairs as an array [span, 2]."""
    flat = np.fromiter(itertools.chain.from_iterable(spans), np.int64, 2 * count)
    return flat.reshape(count, 2)


def _word_bounds(words: Sequence[WordSpan]) -> np.ndarray:
    """The words' (start, end) as an array [word, 2]."""
    return _bounds(((word.start, word.end) for word in words), len(words))


def _covered(bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every position the spans [start, end) of `bounds` cover, span after span, and the index
    of the span each belongs to."""
    lengths = np.maximum(bounds[:, 1] - bounds[:, 0], 0)
    span = np.repeat(np.arange(len(bounds)), lengths)
    position = np.arange(span.size) - (np.cumsum(lengths) - lengths)[span] + bounds[span, 0]
    return position, span


def _word_index_per_char(length: int, bounds: np.ndarray) -> np.ndarray:
    """[char] -> index of the word (row of `bounds`) covering it, -1 for none."""
    owner = np.full(length + 1, -1, dtype=np.int64)  # one spare slot for "past the end"
    position, word = _covered(bounds)
    if position.size == 0 or (
        position[0] >= 0 and position[-1] <= length and bool((np.diff(position) > 0).all())
    ):  # every character at most once, in text order, as word_spans makes them
        owner[position] = word
    else:  # slice by slice, so that a later word takes the characters it shares with an earlier
        for index, (start, end) in enumerate(bounds.tolist()):
            owner[start:end] = index
    return owner


def overlap_alignment(
    text: str, words: Sequence[WordSpan], offsets: Sequence[tuple[int, int]]
) -> list[str]:
    """Tag of the word that the token's non-whitespace characters overlap most (ties: the first)."""
    bounds = _word_bounds(words)
    return _overlap_tags(text, bounds, [word.tag for word in words], offsets)


def _overlap_tags(
    text: str, bounds: np.ndarray, word_tags: Sequence[str], offsets: Sequence[tuple[int, int]]
) -> list[str]:
    """overlap_alignment on words given as a [word, 2] start/end array and their tags."""
    tags = [NO_WORD] * len(offsets)
    if not offsets or not word_tags:
        return tags
    owner = _word_index_per_char(len(text), bounds)[: len(text)]  # [char] -> word, -1: none
    whitespace = [match.span() for match in _WHITESPACE.finditer(text)]
    owner[_covered(_bounds(whitespace, len(whitespace)))[0]] = -1  # whitespace never counts
    position, token = _covered(_bounds(offsets, len(offsets)))  # every character of every token
    word = owner[position]
    counted = word >= 0
    pairs, counts = np.unique(token[counted] * len(word_tags) + word[counted], return_counts=True)
    best_count = [0] * len(offsets)
    # Pairs come sorted by token, then word: on a tie the first word keeps the token.
    for pair, count in zip(pairs.tolist(), counts.tolist(), strict=True):
        index, word_index = divmod(pair, len(word_tags))
        if count > best_count[index]:
            best_count[index] = count
            tags[index] = word_tags[word_index]
    return tags


def paper_alignment(
    text: str, words: Sequence[WordSpan], offsets: Sequence[tuple[int, int]]
) -> list[str]:
    """The paper's rule: the tag of the token's middle character, rounded up (start + ceil(n/2))."""
    owner = _word_index_per_char(len(text), _word_bounds(words))
    tags = []
    for start, end in offsets:
        middle = min(start + (end - start + 1) // 2, len(text))
        word = int(owner[middle])
        tags.append(words[word].tag if word >= 0 else NO_WORD)
    return tags
