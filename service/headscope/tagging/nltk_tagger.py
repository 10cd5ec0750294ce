"""Penn Treebank POS tags from NLTK, in this process: the Tagger protocol's PosTagger.

Default pipeline ("overlap"): split sentences (Punkt), split words with the Treebank tokenizer per
sentence, tag each sentence with NLTK's averaged perceptron, then give each model token the tag
of the word its non-whitespace characters overlap most (headscope.tagging.align).

The paper's pipeline ("paper"), kept for comparison: Treebank over the whole text at once, which
glues every sentence-final period but the last onto its word ("lake." tagged NN), and each token
takes the tag of its middle character rounded up.

Punkt and Treebank run sped up where that was checked against stock NLTK at load
(headscope.tagging.speedups), the perceptron in C where that was (headscope.tagging.perceptron).
A PosTagger keeps the texts it tagged last.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from headscope.cache import AnalysisCache
from headscope.errors import StartupError
from headscope.tagging import speedups
from headscope.tagging.align import ALIGNMENTS, bounds_array
from headscope.tagging.base import Alignment, TaggerHealth, WordSpan
from headscope.tagging.perceptron import Perceptron

log = logging.getLogger("headscope.tagging")

TAGGER_PACKAGE = "averaged_perceptron_tagger_eng"
TAGGER_RESOURCE = f"taggers/{TAGGER_PACKAGE}/"
PUNKT_RESOURCE = "tokenizers/punkt_tab/english/"
# Bytes of tagged texts kept by a PosTagger (LRU): room for several default corpus requests
# (bench/README.md has the size of one).
WORD_SPAN_CACHE_BYTES = 16 * 2**20
# Treebank rewrites double quotes as `` and ''; in the text they may be any of these.
QUOTE_FORMS = {"``": ('"', "``", "''", "“"), "''": ('"', "''", "``", "”")}


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
# try-import scipy.stats and sklearn (with pandas): seconds and a lot of memory at startup, for
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


def _has_punkt_tab() -> bool:
    try:
        _import_nltk().data.find(PUNKT_RESOURCE)
        return True
    except LookupError:
        return False


def sentence_splitter() -> Any:
    """A fresh Punkt splitter: punkt_tab's English where installed, else Punkt's defaults."""
    if not _has_punkt_tab():
        return _import_nltk().tokenize.PunktSentenceTokenizer()
    from nltk.tokenize.punkt import PunktTokenizer

    return PunktTokenizer("english")


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


def _weights_sha256(folder: str) -> str:
    digest = hashlib.sha256()
    for name in sorted(name for name in os.listdir(folder) if name.endswith(".json")):
        with open(os.path.join(folder, name), "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()


class PosTagger:
    """NLTK's sentence splitter, Treebank word tokenizer and perceptron tagger, loaded once."""

    health: TaggerHealth = "ready"

    def __init__(
        self, cache_bytes: int = WORD_SPAN_CACHE_BYTES, native_cache: Path | None = None
    ) -> None:
        # The corpus endpoints tag the same sequences on every request (another tag, another
        # head) and clients send one text to several endpoints: tagged texts are kept, in
        # compact arrays.
        self.cache = AnalysisCache(cache_bytes)
        tagger_folder = ensure_tagger_data()
        nltk = _import_nltk()
        # The C word loop is built into native_cache (the kernel cache) on first use.
        self.perceptron = Perceptron(nltk.tag.perceptron.PerceptronTagger(lang="eng"), native_cache)
        tokenizers = speedups.tokenizers(nltk, sentence_splitter)
        self.sentence_splitter, self.word_tokenizer = tokenizers.sentences, tokenizers.words
        self.identity = {
            "tagger": f"nltk {TAGGER_PACKAGE}",
            "tagger_sha256": _weights_sha256(tagger_folder),
            "sentence_splitter": "punkt_tab (english)"
            if _has_punkt_tab()
            else "PunktSentenceTokenizer (untrained defaults)",
            "word_tokenizer": "TreebankWordTokenizer",
            "nltk_version": nltk.__version__,
        }

    @property
    def classes(self) -> set[str]:
        """Every tag the tagger can give a word."""
        return self.perceptron.classes

    def _tag_chunks(
        self, text: str, chunks: Iterable[tuple[int, int]]
    ) -> tuple[list[tuple[int, int]], list[str]]:
        """The tagged words of each text[start:end], as ((start, end) list, tag list)."""
        pieces = [(start, text[start:end]) for start, end in chunks]
        sentences = [self.word_tokenizer.tokenize(chunk) for _, chunk in pieces]
        bounds: list[tuple[int, int]] = []
        tags: list[str] = []
        for (start, chunk), words, sentence_tags in zip(
            pieces, sentences, self.perceptron.tag_sentences(sentences), strict=True
        ):
            for span, tag in zip(align_words(chunk, words, start), sentence_tags, strict=True):
                if span is not None:
                    bounds.append(span)
                    tags.append(tag)
        return bounds, tags

    def word_span_arrays(self, text: str) -> tuple[np.ndarray, list[str]]:
        """The tagged words of `text`, sentence by sentence, as ([word, 2] start/end array,
        tags); cached by text."""

        def compute() -> dict:
            bounds, tags = self._tag_chunks(text, self.sentence_splitter.span_tokenize(text))
            return {"bounds": bounds_array(bounds, len(bounds)), "tags": tags}

        cached = self.cache.get_or_compute((text,), compute)
        return cached["bounds"], cached["tags"]

    def word_spans(self, text: str) -> list[WordSpan]:
        bounds, tags = self.word_span_arrays(text)
        return [
            WordSpan(start, end, tag)
            for (start, end), tag in zip(bounds.tolist(), tags, strict=True)
        ]

    def paper_word_spans(self, text: str) -> list[WordSpan]:
        """Tagged words of `text` as the paper made them: one Treebank pass over the whole text."""
        bounds, tags = self._tag_chunks(text, [(0, len(text))])
        return [WordSpan(start, end, tag) for (start, end), tag in zip(bounds, tags, strict=True)]

    def tag_tokens(
        self, text: str, offsets: Sequence[tuple[int, int]], alignment: Alignment = "overlap"
    ) -> list[str]:
        if alignment == "paper":
            bounds_list, tags = self._tag_chunks(text, [(0, len(text))])
            bounds = bounds_array(bounds_list, len(bounds_list))
        else:
            bounds, tags = self.word_span_arrays(text)
        return ALIGNMENTS[alignment](text, bounds, tags, offsets)

    def submit_tag_tokens(
        self, text: str, offsets: Sequence[tuple[int, int]], alignment: Alignment = "overlap"
    ) -> Future[list[str]]:
        """tag_tokens, done now, as a finished future."""
        future: Future[list[str]] = Future()
        try:
            future.set_result(self.tag_tokens(text, offsets, alignment))
        except Exception as err:  # noqa: BLE001 - raised again by result(), as tag_tokens would
            future.set_exception(err)
        return future

    def prefetch(self, text: str) -> bool:
        """Nothing to do ahead of time in this process."""
        return False

    def close(self) -> None:
        """Nothing to stop."""
