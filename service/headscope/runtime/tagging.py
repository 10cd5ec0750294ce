"""Penn Treebank POS tags (NLTK) for words, and their alignment to model tokens.

Default pipeline ("overlap"): split sentences (Punkt), split words with the Treebank tokenizer per
sentence, tag each sentence with NLTK's averaged perceptron, then give each model token the tag
of the word its non-whitespace characters overlap most.

The paper's pipeline ("paper"), kept for comparison: Treebank over the whole text at once, which
glues every sentence-final period but the last onto its word ("lake." tagged NN), and each token
takes the tag of its middle character rounded up, which lands one-character tokens such as "."
and "," on the following space.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import nltk
import numpy as np
from nltk.tag.perceptron import PerceptronTagger
from nltk.tokenize import PunktSentenceTokenizer, TreebankWordTokenizer

from headscope.errors import StartupError

log = logging.getLogger("headscope.tagging")

TAGGER_PACKAGE = "averaged_perceptron_tagger_eng"
TAGGER_RESOURCE = f"taggers/{TAGGER_PACKAGE}/"
PUNKT_RESOURCE = "tokenizers/punkt_tab/english/"
NO_WORD = "NONE"
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


class PosTagger:
    """NLTK sentence splitter, Treebank word tokenizer and perceptron tagger, loaded once."""

    def __init__(self) -> None:
        tagger_folder = ensure_tagger_data()
        self.tagger = PerceptronTagger(lang="eng")
        try:
            nltk.data.find(PUNKT_RESOURCE)
            from nltk.tokenize.punkt import PunktTokenizer

            self.sentence_splitter = PunktTokenizer("english")
            splitter_name = "punkt_tab (english)"
        except LookupError:
            self.sentence_splitter = PunktSentenceTokenizer()
            splitter_name = "PunktSentenceTokenizer (untrained defaults)"
        self.word_tokenizer = TreebankWordTokenizer()
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

    def _tag_chunk(self, text: str, start: int, end: int) -> list[WordSpan]:
        chunk = text[start:end]
        words = self.word_tokenizer.tokenize(chunk)
        if not words:
            return []
        tagged = self.tagger.tag(words)
        return [
            WordSpan(span[0], span[1], tag)
            for span, (_, tag) in zip(align_words(chunk, words, start), tagged, strict=True)
            if span is not None
        ]

    def word_spans(self, text: str) -> list[WordSpan]:
        """Tagged words of `text`, sentence by sentence."""
        spans: list[WordSpan] = []
        for start, end in self.sentence_splitter.span_tokenize(text):
            spans.extend(self._tag_chunk(text, start, end))
        return spans

    def paper_word_spans(self, text: str) -> list[WordSpan]:
        """Tagged words of `text` as the paper made them: one Treebank pass over the whole text."""
        return self._tag_chunk(text, 0, len(text))

    def tag_tokens(
        self, text: str, offsets: Sequence[tuple[int, int]], alignment: str = "overlap"
    ) -> list[str]:
        """One tag per model token, given the tokens' character offsets into `text`."""
        if alignment == "paper":
            return paper_alignment(text, self.paper_word_spans(text), offsets)
        return overlap_alignment(text, self.word_spans(text), offsets)


def _word_index_per_char(length: int, words: Sequence[WordSpan]) -> np.ndarray:
    owner = np.full(length + 1, -1, dtype=np.int64)  # one spare slot for "past the end"
    for index, word in enumerate(words):
        owner[word.start : word.end] = index
    return owner


def overlap_alignment(
    text: str, words: Sequence[WordSpan], offsets: Sequence[tuple[int, int]]
) -> list[str]:
    """Tag of the word that the token's non-whitespace characters overlap most (ties: the first)."""
    owner = _word_index_per_char(len(text), words)
    tags = []
    for start, end in offsets:
        counts: dict[int, int] = {}
        has_visible_character = False
        for position in range(start, end):
            if text[position].isspace():
                continue
            has_visible_character = True
            word = int(owner[position])
            if word >= 0:
                counts[word] = counts.get(word, 0) + 1
        if not has_visible_character or not counts:
            tags.append(NO_WORD)
            continue
        best = max(counts.items(), key=lambda item: (item[1], -item[0]))[0]
        tags.append(words[best].tag)
    return tags


def paper_alignment(
    text: str, words: Sequence[WordSpan], offsets: Sequence[tuple[int, int]]
) -> list[str]:
    """The paper's rule: the tag of the token's middle character, rounded up (start + ceil(n/2))."""
    owner = _word_index_per_char(len(text), words)
    tags = []
    for start, end in offsets:
        middle = min(start + (end - start + 1) // 2, len(text))
        word = int(owner[middle])
        tags.append(words[word].tag if word >= 0 else NO_WORD)
    return tags
