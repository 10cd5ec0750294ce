"""The map of a corpus job: one shard of sequences -> float64 sums (and float16 probe features).

Every corpus statistic the API serves is a ratio of sums over tokens, so a shard's sums are its
sufficient statistics and the reduce is a key-wise sum (order-independent up to float64
round-off). The sums are kept for every tag, position and head at once, so one job answers every
request the corpus endpoints take for any tag, head and direction. Per token they are exactly
what `headscope.analysis.corpus` adds up for one request: the same tagger, the same truncation
at `max_tokens`, the same forward pass, the same float64 formulas.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from headscope.analysis.corpus import (
    ALL_PATTERN_BATCH_CELLS,
    BATCH_CELLS,
    BATCH_TOKENS,
    quote_masks,
    quote_spans,
)
from headscope.analysis.service import Encoded, Runtime
from headscope.errors import UnknownHead
from headscope.tagging.base import NO_WORD

STATISTICS = ("activity-by-tag", "attention-by-tag", "quotes")
FEATURES = "probe-features"
JOB_KINDS = (*STATISTICS, FEATURES)
POSITIONS = ("on", "before", "after")
FEATURE_VECTORS = {"key": "keys", "query": "queries", "value": "values"}

Sums = dict[str, np.ndarray]


def tag_vocabulary(runtime: Runtime) -> list[str]:
    """Every tag a token can carry, in the order of the sums' tag axes."""
    return sorted(set(runtime.tagger.classes) | {NO_WORD})


def encode_truncated(runtime: Runtime, text: str) -> tuple[Encoded, bool]:
    """A corpus sequence cut to its first max_tokens tokens, as the corpus endpoints cut it
    (and whether it was cut)."""
    encoding = runtime.tokenizer(text, add_special_tokens=False)
    ids, offsets = encoding.input_ids, encoding.offset_mapping
    limit = runtime.max_tokens
    if len(ids) <= limit:
        return Encoded(text, ids, offsets), False
    offsets = offsets[:limit]
    return Encoded(text[: offsets[-1][1]], ids[:limit], offsets), True


def merge(parts: Iterable[Mapping[str, np.ndarray]]) -> Sums:
    """The key-wise float64 sum of shard sums."""
    total: Sums = {}
    for part in parts:
        for name, array in part.items():
            if name in total:
                total[name] = total[name] + array
            else:
                total[name] = np.array(array, dtype=np.float64)
    return total


@dataclass
class ShardResult:
    sums: Sums
    features: dict[str, np.ndarray]  # probe features: vectors [layer, head, token, d] float16 …
    tokens: int
    sequences: int
    # Quotations found: [sequence in shard, opening token, closing token or None, start, end,
    # inside tokens], the corpus endpoint's QuoteSpan fields.
    quote_spans: list[list[int | None]] = field(default_factory=list)


def position_masks(one_hot: np.ndarray) -> np.ndarray:
    """[position, token, tag]: tokens on, just before and just after a run of each tag (the
    masks `headscope.analysis.corpus.runs_of` draws one tag at a time)."""
    on = one_hot.astype(bool)  # [token, tag]
    before = np.zeros_like(on)
    after = np.zeros_like(on)
    before[:-1] = ~on[:-1] & on[1:]
    after[1:] = ~on[1:] & on[:-1]
    return np.stack([on, before, after]).astype(np.float64)


def map_shard(runtime: Runtime, texts: Sequence[str], kinds: Sequence[str]) -> ShardResult:
    """Tag and run one shard's sequences; the sums (and features) of the job kinds asked for."""
    g = runtime.geometry
    n_layers, n_heads = g.n_layers, g.n_heads
    vocabulary = tag_vocabulary(runtime)
    tag_index = {tag: i for i, tag in enumerate(vocabulary)}
    n_tags = len(vocabulary)
    encoded_cut = [encode_truncated(runtime, text) for text in texts]
    encoded = [sequence for sequence, _ in encoded_cut]
    tags = [runtime.tags(sequence) for sequence in encoded]
    spans = (
        [quote_spans(e.text, e.offsets, runtime.tagger.word_spans(e.text)) for e in encoded]
        if "quotes" in kinds
        else [[] for _ in encoded]
    )
    all_patterns = "attention-by-tag" in kinds or any(spans)
    features_wanted = FEATURES in kinds

    sums: Sums = {
        "tokens": np.zeros(1),
        "sequences": np.array([float(len(encoded))]),
        "truncated": np.array([float(sum(cut for _, cut in encoded_cut))]),
    }
    if "activity-by-tag" in kinds:
        sums |= {
            "activity.sum_at": np.zeros((len(POSITIONS), n_tags, n_layers, n_heads)),
            "activity.positions": np.zeros((len(POSITIONS), n_tags)),
            "activity.sequences_with_position": np.zeros((len(POSITIONS), n_tags)),
            "activity.sum_all": np.zeros((n_layers, n_heads)),
            "activity.tag_tokens": np.zeros(n_tags),
        }
    if "attention-by-tag" in kinds:
        sums |= {
            "attention.mass": np.zeros((n_layers, n_heads, n_tags, n_tags)),
            "attention.uniform_mass": np.zeros((n_layers, n_tags, n_tags)),
            "attention.tag_tokens": np.zeros(n_tags),
            "attention.sequences_with_tag": np.zeros(n_tags),
        }
    if "quotes" in kinds:
        sums |= {
            "quotes.sum_inside": np.zeros((n_layers, n_heads)),
            "quotes.sum_outside": np.zeros((n_layers, n_heads)),
            "quotes.sum_to_opening": np.zeros((n_layers, n_heads)),
            "quotes.inside_tokens": np.zeros(1),
            "quotes.outside_tokens": np.zeros(1),
            "quotes.spans": np.array([float(sum(len(found) for found in spans))]),
            "quotes.sequences_with_inside": np.zeros(1),
        }
    per_sequence_features: list[dict[str, np.ndarray] | None] = [None] * len(encoded)

    uniform_cache: dict[tuple[int, int], np.ndarray] = {}

    def uniform(layer: int, n: int) -> np.ndarray:
        """[q, k]: attention spread evenly over the keys a query may see on `layer`."""
        key = (layer, n)
        if key not in uniform_cache:
            visible = runtime.runner.visible(layer, n).astype(np.float64)
            uniform_cache[key] = visible / visible.sum(axis=-1, keepdims=True)
        return uniform_cache[key]

    for batch, results in runtime.runner.batches(
        [e.ids for e in encoded],
        max_batch_tokens=BATCH_TOKENS,
        max_batch_cells=ALL_PATTERN_BATCH_CELLS if all_patterns else BATCH_CELLS,
        longest_first=False,
        all_patterns=all_patterns,
        vectors=features_wanted,
    ):
        for index, result in zip(batch, results, strict=True):
            activity = result.activity.astype(np.float64)  # [layer, head, token]
            n = activity.shape[-1]
            sums["tokens"] += n
            one_hot = np.eye(n_tags)[[tag_index[t] for t in tags[index]]]  # [token, tag]
            per_tag = one_hot.sum(axis=0)  # [tag]
            if "activity-by-tag" in kinds:
                masks = position_masks(one_hot)  # [position, token, tag]
                # [position, tag, layer, head]
                sums["activity.sum_at"] += np.einsum("ptg,lht->pglh", masks, activity)
                counts = masks.sum(axis=1)  # [position, tag]
                sums["activity.positions"] += counts
                sums["activity.sequences_with_position"] += counts > 0
                sums["activity.sum_all"] += activity.sum(axis=-1)
                sums["activity.tag_tokens"] += per_tag
            if "attention-by-tag" in kinds:
                patterns = result.all_patterns  # [layer, head, q, k]
                assert patterns is not None
                for layer in range(n_layers):
                    layer_patterns = patterns[layer].astype(np.float64)  # [head, q, k]
                    # [head, q tag, k tag]
                    sums["attention.mass"][layer] += one_hot.T @ (layer_patterns @ one_hot)
                    sums["attention.uniform_mass"][layer] += one_hot.T @ (
                        uniform(layer, n) @ one_hot
                    )
                sums["attention.tag_tokens"] += per_tag
                sums["attention.sequences_with_tag"] += per_tag > 0
            if "quotes" in kinds:
                inside, outside, opening_of = quote_masks(spans[index], n)
                sums["quotes.sum_inside"] += activity[:, :, inside].sum(axis=-1)
                sums["quotes.sum_outside"] += activity[:, :, outside].sum(axis=-1)
                sums["quotes.inside_tokens"] += inside.sum()
                sums["quotes.outside_tokens"] += outside.sum()
                if inside.any():
                    sums["quotes.sequences_with_inside"] += 1
                    queries = np.flatnonzero(inside)
                    assert result.all_patterns is not None
                    # [layer, head, inside token]
                    weights = result.all_patterns[:, :, queries, opening_of[queries]]
                    sums["quotes.sum_to_opening"] += weights.astype(np.float64).sum(axis=-1)
            if features_wanted:
                per_sequence_features[index] = {
                    vector: getattr(result, field) for vector, field in FEATURE_VECTORS.items()
                }

    features: dict[str, np.ndarray] = {}
    if features_wanted:
        empty = np.zeros((n_layers, n_heads, 0, g.d_head), dtype=np.float16)
        for vector in FEATURE_VECTORS:
            parts = [item[vector] for item in per_sequence_features if item is not None]
            # [layer, head, token, d_head], sequences concatenated in corpus order
            features[vector] = np.concatenate([empty, *parts], axis=2).astype(np.float16)
        features["token_ids"] = np.array([i for e in encoded for i in e.ids], dtype=np.int64)
        features["tags"] = np.array(
            [tag_index[t] for sequence_tags in tags for t in sequence_tags], dtype=np.int16
        )
        features["sequence"] = np.repeat(
            np.arange(len(encoded), dtype=np.int64), [len(e.ids) for e in encoded]
        )
    found_spans: list[list[int | None]] = []
    for index, found in enumerate(spans):
        n = len(encoded[index])
        for opening, closing, start, end in found:
            stop = n if closing is None else closing
            found_spans.append([index, opening, closing, start, end, max(stop - opening - 1, 0)])
    return ShardResult(sums, features, int(sums["tokens"][0]), len(encoded), found_spans)


def require_head(layer: int, head: int, n_layers: int, n_heads: int) -> None:
    """UnknownHead (422) unless L`layer`H`head` is in the job's model."""
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise UnknownHead(
            f"L{layer}H{head} does not exist: the job's model has {n_layers} layers x "
            f"{n_heads} heads",
            detail={"layer": layer, "head": head, "n_layers": n_layers, "n_heads": n_heads},
        )
