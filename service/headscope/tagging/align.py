"""From tagged words to tagged model tokens.

"overlap" (the default): each model token takes the tag of the word its non-whitespace characters
overlap most (ties: the first word). "paper" (kept for comparison): each token takes the tag of
its middle character rounded up, as the paper did, which lands one-character tokens such as "."
and "," on the following space.

Words come as a [word, 2] start/end array with their tags (what the tagger caches), or as
WordSpans; tokens as (start, end) character offsets, as the tokenizer gives them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence

import numpy as np

from headscope.tagging.base import NO_WORD, Alignment, WordSpan

# In a str pattern \s matches exactly the characters str.isspace() accepts.
_WHITESPACE = re.compile(r"\s+")


def bounds_array(spans: Iterable[tuple[int, int]], count: int) -> np.ndarray:
    """`count` (start, end) pairs as an array [span, 2]."""
    flat = np.fromiter(itertools.chain.from_iterable(spans), np.int64, 2 * count)
    return flat.reshape(count, 2)


def _word_bounds(words: Sequence[WordSpan]) -> np.ndarray:
    """The words' (start, end) as an array [word, 2]."""
    return bounds_array(((word.start, word.end) for word in words), len(words))


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
    ):  # every character at most once, in text order, as the tagger makes them
        owner[position] = word
    else:  # slice by slice, so that a later word takes the characters it shares with an earlier
        for index, (start, end) in enumerate(bounds.tolist()):
            owner[start:end] = index
    return owner


def overlap_tags(
    text: str, bounds: np.ndarray, word_tags: Sequence[str], offsets: Sequence[tuple[int, int]]
) -> list[str]:
    """The "overlap" tag of each token, for words given as a [word, 2] array and their tags."""
    tags = [NO_WORD] * len(offsets)
    if not offsets or not word_tags:
        return tags
    owner = _word_index_per_char(len(text), bounds)[: len(text)]  # [char] -> word, -1: none
    whitespace = [match.span() for match in _WHITESPACE.finditer(text)]
    owner[_covered(bounds_array(whitespace, len(whitespace)))[0]] = -1  # whitespace never counts
    position, token = _covered(bounds_array(offsets, len(offsets)))  # every char of every token
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


def paper_tags(
    text: str, bounds: np.ndarray, word_tags: Sequence[str], offsets: Sequence[tuple[int, int]]
) -> list[str]:
    """The "paper" tag of each token: its middle character's, rounded up (start + ceil(n/2))."""
    owner = _word_index_per_char(len(text), bounds)
    tags = []
    for start, end in offsets:
        middle = min(start + (end - start + 1) // 2, len(text))
        word = int(owner[middle])
        tags.append(word_tags[word] if word >= 0 else NO_WORD)
    return tags


ALIGNMENTS = {"overlap": overlap_tags, "paper": paper_tags}


def align(
    alignment: Alignment,
    text: str,
    words: Sequence[WordSpan],
    offsets: Sequence[tuple[int, int]],
) -> list[str]:
    """One tag per token of `offsets`, from the tagged `words` of `text`."""
    return ALIGNMENTS[alignment](text, _word_bounds(words), [word.tag for word in words], offsets)
