"""Many sequences through the engine in few forward passes: batches of similar length.

Sequences are right-padded. GPT-Neo's attention is causal, so a real token never sees the
padding after it and its numbers are those of the unpadded sequence (tests check this); the
padded positions' outputs are junk and are cut off before anything is returned. Grouping by
length keeps that junk, i.e. wasted work, small.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from headscope.model.engine import AnalysisEngine, EngineOutput

# A batch holds at most this many padded tokens: enough to amortise per-op overhead on short
# sequences. Past ~128 tokens a sequence is compute-bound and batching gains little.
DEFAULT_BATCH_TOKENS = 2048
# With every pattern kept, the output alone is 512 bytes x batch x t² (8 layers x 16 heads,
# float32). glibc serves blocks over 32 MiB (its largest dynamic mmap threshold) with fresh
# mmapped memory on every call, and their page faults cost more than batching saves (measured
# with the C kernel, ~155-token sequences: 23.7k tokens/s at 2 a batch (25 MB), 11.7k at 4,
# 11.5k at 8), so all-pattern batches stay under it for typical lengths.
ALL_PATTERNS_BATCH_TOKENS = 320
# Sequences join a batch while the batch's longest is at most this much longer than they are.
DEFAULT_LENGTH_SLACK = 1.25
# Token id used for padding; any id works, since padded positions are never read back.
PAD_ID = 0


def pad_batch(sequences: Sequence[Sequence[int]]) -> Tensor:
    """[batch, longest] token ids, right-padded."""
    longest = max(len(ids) for ids in sequences)
    batch = torch.full((len(sequences), longest), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(sequences):
        batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return batch


def length_groups(
    lengths: Sequence[int],
    *,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    length_slack: float = DEFAULT_LENGTH_SLACK,
    max_batch: int | None = None,
) -> list[list[int]]:
    """Indices of `lengths` grouped into batches of similar length, longest first."""
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    groups: list[list[int]] = []
    for index in order:
        if groups:
            group = groups[-1]
            longest = lengths[group[0]]
            fits = (len(group) + 1) * longest <= max_batch_tokens
            similar = longest <= lengths[index] * length_slack
            room = max_batch is None or len(group) < max_batch
            if fits and similar and room:
                group.append(index)
                continue
        groups.append([index])
    return groups


@dataclass
class SequenceOutput:
    """One sequence's slice of a batched EngineOutput (same fields, no batch axis, no padding)."""

    length: int
    activity: Tensor  # [layer, head, token]
    patterns: dict[tuple[int, int], Tensor]  # (l, h) -> [q, k]
    all_patterns: Tensor | None = None  # [layer, head, q, k]
    keys: Tensor | None = None  # [layer, head, token, d_head]
    queries: Tensor | None = None
    values: Tensor | None = None
    contributions: Tensor | None = None  # [layer, head, token, d_model]
    attention_outputs: Tensor | None = None  # [layer, token, d_model]


def split_output(output: EngineOutput, lengths: Sequence[int]) -> list[SequenceOutput]:
    """Cut a batch's output into its sequences, dropping the padded positions."""

    def cut(tensor: Tensor | None, row: int, length: int, square: bool = False) -> Tensor | None:
        if tensor is None:
            return None
        piece = tensor[row, ..., :length, :length] if square else tensor[row]
        return piece

    pieces = []
    for row, length in enumerate(lengths):
        pieces.append(
            SequenceOutput(
                length=length,
                activity=output.activity[row, :, :, :length],
                patterns={
                    head: pattern[row, :length, :length]
                    for head, pattern in output.patterns.items()
                },
                all_patterns=cut(output.all_patterns, row, length, square=True),
                keys=None if output.keys is None else output.keys[row, :, :, :length],
                queries=None if output.queries is None else output.queries[row, :, :, :length],
                values=None if output.values is None else output.values[row, :, :, :length],
                contributions=None
                if output.contributions is None
                else output.contributions[row, :, :, :length],
                attention_outputs=None
                if output.attention_outputs is None
                else output.attention_outputs[row, :, :length],
            )
        )
    return pieces


def run_batched(
    engine: AnalysisEngine,
    sequences: Sequence[Sequence[int]],
    *,
    max_batch_tokens: int | None = None,
    length_slack: float = DEFAULT_LENGTH_SLACK,
    max_batch: int | None = None,
    last_layer: int | None = None,
    patterns: Iterable[tuple[int, int]] = (),
    all_patterns: bool = False,
    vectors: bool = False,
    contributions: bool = False,
) -> list[SequenceOutput]:
    """Run every sequence, in batches of similar length; outputs in the input's order.

    `max_batch_tokens` defaults to DEFAULT_BATCH_TOKENS, or ALL_PATTERNS_BATCH_TOKENS when
    every pattern is kept.
    """
    wanted = list(patterns)
    lengths = [len(ids) for ids in sequences]
    if max_batch_tokens is None:
        max_batch_tokens = ALL_PATTERNS_BATCH_TOKENS if all_patterns else DEFAULT_BATCH_TOKENS
    outputs: list[SequenceOutput | None] = [None] * len(sequences)
    for group in length_groups(
        lengths, max_batch_tokens=max_batch_tokens, length_slack=length_slack, max_batch=max_batch
    ):
        output = engine.run(
            pad_batch([sequences[index] for index in group]),
            last_layer=last_layer,
            patterns=wanted,
            all_patterns=all_patterns,
            vectors=vectors,
            contributions=contributions,
        )
        for index, piece in zip(
            group, split_output(output, [lengths[i] for i in group]), strict=True
        ):
            outputs[index] = piece
    return outputs  # type: ignore[return-value]
