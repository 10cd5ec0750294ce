"""Probe datasets: tag a corpus, split it by sequence, and extract every head's key, query and
value vectors at every token with the model runner, in right-padded batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from headscope.model.runner import ModelRunner
from headscope.tagging.base import NO_WORD

VECTORS = ("key", "query", "value")
# SequenceArrays attribute holding each vector kind.
ENGINE_FIELDS = {"key": "keys", "query": "queries", "value": "values"}

T = TypeVar("T")
# progress(iterable, description, total) -> the same items, reporting as they pass.
Progress = Callable[[Iterable[T], str, int], Iterable[T]]


def no_progress(items: Iterable[T], description: str, total: int) -> Iterable[T]:
    return items


@dataclass(frozen=True)
class Split:
    seed: int
    test_size: float
    max_sequences: int | None
    train: list[int]  # indices into the corpus' sequences
    test: list[int]


def split_by_sequence(
    n_sequences: int, *, seed: int, test_size: float, max_sequences: int | None
) -> Split:
    """Seeded split of whole sequences, so no sequence has tokens on both sides; then each side
    is capped at `max_sequences` (the paper used 200 + 200)."""
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be between 0 and 1, got {test_size}")
    order = np.random.default_rng(seed).permutation(n_sequences)
    n_test = max(1, round(n_sequences * test_size))
    if n_test >= n_sequences:
        raise ValueError(f"{n_sequences} sequences are too few to split with test_size={test_size}")
    test, train = order[:n_test], order[n_test:]
    if max_sequences is not None:
        train, test = train[:max_sequences], test[:max_sequences]
    return Split(seed, test_size, max_sequences, train.tolist(), test.tolist())


@dataclass
class TokenSet:
    """The tokens of one split that carry a label, with their features."""

    sequences: list[int]
    token_ids: np.ndarray  # [token] int64
    tags: np.ndarray  # [token] str
    features: dict[str, np.ndarray] = field(default_factory=dict)  # [layer, head, token, d_head]
    truncated_sequences: int = 0
    dropped_none_tokens: int = 0

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class TaggedSequence:
    ids: list[int]
    tags: list[str]
    truncated: bool


def tag_sequences(
    runtime, texts: Sequence[str], *, progress: Progress = no_progress, description: str = "tag"
) -> list[TaggedSequence]:
    """Tokenize (truncating at the runtime's token limit) and give every token its Penn tag."""
    tagged = []
    for text in progress(texts, description, len(texts)):
        encoding = runtime.tokenizer(text, add_special_tokens=False)
        ids, offsets = encoding.input_ids, encoding.offset_mapping
        truncated = len(ids) > runtime.max_tokens
        ids, offsets = ids[: runtime.max_tokens], offsets[: runtime.max_tokens]
        tags = runtime.tagger.tag_tokens(text, offsets, "overlap")
        tagged.append(TaggedSequence(ids, tags, truncated))
    return tagged


def extract_vectors(
    runner: ModelRunner,
    id_lists: Sequence[Sequence[int]],
    vectors: Sequence[str],
    *,
    batch_size: int = 32,
    progress: Progress = no_progress,
    description: str = "extract",
) -> dict[str, np.ndarray]:
    """Every head's vectors at every token, sequences concatenated in the given order.

    Sequences are batched by length and right-padded: attention is causal, so padding after a
    sequence never changes its own positions.
    Returns vector -> [layer, head, token, d_head] float32.
    """
    g = runner.geometry
    n_batches = -(-len(id_lists) // batch_size)
    per_sequence: dict[str, list[np.ndarray | None]] = {v: [None] * len(id_lists) for v in vectors}
    batches = runner.batches(id_lists, max_batch=batch_size, vectors=True)
    for batch, results in progress(batches, description, n_batches):
        for index, result in zip(batch, results, strict=True):
            for vector in vectors:
                per_sequence[vector][index] = getattr(result, ENGINE_FIELDS[vector])
    empty = np.zeros((g.n_layers, g.n_heads, 0, g.d_head), dtype=np.float32)
    return {
        vector: np.ascontiguousarray(np.concatenate([empty, *parts], axis=2), dtype=np.float32)
        for vector, parts in per_sequence.items()
    }


def build_token_set(
    runtime,
    texts: Sequence[str],
    sequences: Sequence[int],
    vectors: Sequence[str],
    *,
    include_none: bool,
    batch_size: int = 32,
    progress: Progress = no_progress,
    name: str = "",
) -> TokenSet:
    """Tag and extract the sequences `sequences` (indices into `texts`) of one split."""
    tagged = tag_sequences(
        runtime, [texts[i] for i in sequences], progress=progress, description=f"tag {name}"
    )
    features = extract_vectors(
        runtime.runner,
        [item.ids for item in tagged],
        vectors,
        batch_size=batch_size,
        progress=progress,
        description=f"extract {name}",
    )
    token_ids = np.array([i for item in tagged for i in item.ids], dtype=np.int64)
    tags = np.array([t for item in tagged for t in item.tags], dtype=object).astype(str)
    keep = np.ones(len(tags), dtype=bool) if include_none else tags != NO_WORD
    return TokenSet(
        sequences=list(sequences),
        token_ids=token_ids[keep],
        tags=tags[keep],
        features={vector: array[:, :, keep] for vector, array in features.items()},
        truncated_sequences=sum(item.truncated for item in tagged),
        dropped_none_tokens=int((~keep).sum()),
    )
