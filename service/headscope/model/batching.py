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
# sequences; long sequences are compute-bound and gain little from batching.
DEFAULT_BATCH_TOKENS = 2048
# With every pattern kept, the output alone is 4 bytes x layers x heads x batch x t². glibc
# serves blocks over its largest dynamic mmap threshold with fresh mmapped memory on every call,
# and their page faults cost more than batching saves (bench/README.md), so all-pattern batches
# stay under it for typical lengths.
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
    max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS,
    length_slack: float | None = DEFAULT_LENGTH_SLACK,
    max_batch: int | None = None,
    max_batch_cells: int | None = None,
    longest_first: bool = True,
) -> list[list[int]]:
    """Indices of `lengths` grouped into batches of similar length, in length order (longest
    first, or shortest first), ties in input order.

    A sequence joins the current batch while, counting it, the batch stays within
    `max_batch_tokens` padded tokens (batch x longest), `max_batch_cells` attention cells per
    head (batch x longest²), `max_batch` sequences, and its longest is at most `length_slack`
    times its shortest; None lifts a bound.
    """
    order = sorted(range(len(lengths)), key=lambda index: lengths[index], reverse=longest_first)
    groups: list[list[int]] = []
    for index in order:
        if groups:
            group = groups[-1]
            size = len(group) + 1
            ends = (lengths[group[0]], lengths[index])
            longest, shortest = max(ends), min(ends)
            if (
                (max_batch_tokens is None or size * longest <= max_batch_tokens)
                and (max_batch_cells is None or size * longest * longest <= max_batch_cells)
                and (max_batch is None or size <= max_batch)
                and (length_slack is None or longest <= shortest * length_slack)
            ):
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
