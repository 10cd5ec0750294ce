"""NLTK's averaged perceptron tagger over sentences: stock NLTK, or its word loop in C.

Stock NLTK (PerceptronTagger.tag) is the reference. The one fast implementation is the C loop
(native/perceptron_tagger.c): for each word it builds NLTK's 14 feature names piece by piece,
finds their rows in a [feature, label] matrix of NLTK's weights and adds them in NLTK's order from
0.0, so every score is the float NLTK computes and every tag NLTK's. It is built on the serving
machine and used only after tagging CHECK_SENTENCES exactly as stock NLTK at load; without a C
compiler, or with a build that disagrees, stock NLTK tags (one log line says why).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headscope.native import build as native_build

log = logging.getLogger("headscope.tagging")

PERCEPTRON_SOURCE = Path(__file__).parents[1] / "native" / "perceptron_tagger.c"
# No fast-math or reassociation flags: every score is IEEE double additions in NLTK's order.
PERCEPTRON_FLAGS = ("-O2", "-fPIC", "-shared")
# Sentences that touch every corner of the C loop: the START/END padding, tag-dictionary words,
# quotes, numbers and hyphens (NLTK's normalize), multi-byte UTF-8 in suffixes and prefixes, a
# lone surrogate, unknown and very long words, the empty word and the empty sentence.
CHECK_SENTENCES = (
    ("The", "dog", "ran", "to", "the", "park", "."),
    ("``", "Hi", ",", "''", "she", "said", ",", "and", "Lily", "smiled", "."),
    ("1984", "was", "a", "well-known", "-5", "year", "of", "12,000", "x-rays", "!"),
    ("caf\u00e9", "na\u00efve", "\U0001f642", "\u65e5\u672c\u8a9e", "stra\u00dfe", "\u00e9t\u00e9"),
    ("Zyxqwv", "blorptastic", "florbed", "the", "snarfle", "x" * 300, "", "a"),
    ("a", "lone", "\ud800", "surrogate", "\udfffx"),
    (),
    ("Tom",),
)
# Words are joined by newlines for C; a word holding one (never a Treebank word) goes to NLTK.
_SEPARATOR = "\n"


def _utf8(text: str) -> bytes:
    # Lone surrogates as three bytes, like any other code point: C counts code points by lead
    # bytes, so word[-3:] and word[:1] come out as Python's.
    return text.encode("utf-8", "surrogatepass")


class NativeTaggerMismatch(Exception):
    pass


class NativePerceptron:
    """NLTK's PerceptronTagger.tag on whole texts, in C: the same tags."""

    def __init__(self, library: ctypes.CDLL, stock: Any) -> None:
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
        self.START, self.END = stock.START, stock.END
        # NLTK's normalize, bound to a weightless tagger: holding `stock` would keep its dicts
        # of weights alive next to the matrix.
        self.normalize = type(stock)(load=False).normalize
        self.tagdict: dict[str, str] = stock.tagdict
        # NLTK takes the max over the model's classes, the largest label among equal scores:
        # labels in descending order, and C keeps the first of equal scores.
        labels = sorted(stock.model.classes, reverse=True)
        column = {label: index for index, label in enumerate(labels)}
        features = stock.model.weights
        self._weights = np.zeros((len(features), len(labels)))  # [feature, label]
        for row, label_weights in enumerate(features.values()):
            for label, weight in label_weights.items():
                if label in column:
                    self._weights[row, column[label]] = weight
        # A name holding a newline can never be asked for (words hold no newline).
        names = [(name, row) for row, name in enumerate(features) if _SEPARATOR not in name]
        keys = _utf8(_SEPARATOR.join(name for name, _ in names))
        rows = np.array([row for _, row in names], dtype=np.int32)
        extra = sorted({tag for tag in self.tagdict.values() if tag} - set(labels))
        self.tags = [*labels, *extra, *self.START]
        self._tag_index = {tag: index for index, tag in enumerate(self.tags)}
        padding = _utf8(_SEPARATOR.join([*self.START, *self.END]))
        tags = _utf8(_SEPARATOR.join(self.tags))
        # C copies the names, the rows and the tags; it reads the weights where they are.
        self._handle = library.headscope_tagger_new(
            keys, len(keys), rows.ctypes.data, len(names), self._weights.ctypes.data,
            len(labels), tags, len(tags), len(self.tags), padding, len(padding),
        )  # fmt: skip
        if not self._handle:
            raise OSError("the native tagger could not be set up (out of memory?)")

    def __del__(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._library.headscope_tagger_free(handle)

    def tag_sentences(self, sentences: Sequence[Sequence[str]]) -> list[list[str]] | None:
        """Each sentence's tags, or None for words it cannot take (a word with a newline)."""
        words = [word for sentence in sentences for word in sentence]
        if not words:
            return [[] for _ in sentences]
        if any(_SEPARATOR in word for word in words):
            return None
        raw = _utf8(_SEPARATOR.join(words))
        normal = _utf8(_SEPARATOR.join(self.normalize(word) for word in words))
        if normal.count(_SEPARATOR.encode()) != len(words) - 1:
            return None
        tagdict, tag_index = self.tagdict, self._tag_index
        fixed = np.array(
            [tag_index[tag] if (tag := tagdict.get(word)) else -1 for word in words],
            dtype=np.int32,
        )  # per word: its tag-dictionary tag's index, or -1 to score it
        lengths = np.array([len(sentence) for sentence in sentences], dtype=np.int32)
        out = np.empty(len(words), dtype=np.int32)
        status = self._library.headscope_tagger_tag(
            self._handle, raw, len(raw), normal, len(normal), lengths.ctypes.data,
            len(sentences), fixed.ctypes.data, out.ctypes.data,
        )  # fmt: skip
        if status != 0:
            return None
        tags = [self.tags[index] for index in out.tolist()]
        result, start = [], 0
        for sentence in sentences:
            result.append(tags[start : start + len(sentence)])
            start += len(sentence)
        return result


def load_native_perceptron(stock: Any, cache_dir: Path | None = None) -> NativePerceptron | None:
    """The C word loop for `stock`'s weights, built on first use and checked against `stock` on
    CHECK_SENTENCES; None (stock NLTK then) without a C compiler, or if it fails or disagrees."""

    def checked(library: ctypes.CDLL, _path: Path) -> NativePerceptron:
        native = NativePerceptron(library, stock)
        want = [[tag for _, tag in stock.tag(list(words))] for words in CHECK_SENTENCES]
        if native.tag_sentences(CHECK_SENTENCES) != want:
            raise NativeTaggerMismatch("the native tagger disagrees with stock NLTK")
        return native

    return native_build.load(
        "perceptron",
        PERCEPTRON_SOURCE,
        PERCEPTRON_FLAGS,
        checked,
        cache_dir=cache_dir,
        instead="tagging with stock NLTK",
    )


class Perceptron:
    """PerceptronTagger.tag for the sentences of a text: in C where that was built and checked
    here, else (and for any word C cannot take) stock NLTK."""

    def __init__(self, stock: Any, native_cache: Path | None = None) -> None:
        self.classes: set[str] = stock.classes
        self.native = load_native_perceptron(stock, native_cache)
        # With C, stock NLTK's dicts of weights are needed only for words C cannot take, which
        # Treebank never makes: loaded again should one come, not kept.
        self._stock = None if self.native is not None else stock
        self._stock_type = type(stock)

    @property
    def stock(self) -> Any:
        if self._stock is None:
            self._stock = self._stock_type(lang="eng")
        return self._stock

    def tag_sentences(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        if self.native is not None:
            tags = self.native.tag_sentences(sentences)
            if tags is not None:
                return tags
        return [[tag for _, tag in self.stock.tag(list(words))] for words in sentences]
