"""Batched runs (right-padded, grouped by length) against one sequence at a time."""

from __future__ import annotations

import random

import torch

from headscope.model.batching import length_groups, pad_batch, run_batched

# Padding widens the rows a softmax sums over (with exact zeros), which can change float32
# rounding in the last bit; nothing else differs.
TOLERANCE = 1e-6


def test_batched_equals_unbatched_including_padding(runtime, corpus_ids):
    engine = runtime.engine
    spans = [(0, 300), (300, 420), (500, 517), (600, 880), (1000, 1001), (2000, 2100)]
    sequences = [corpus_ids[start:end] for start, end in spans]
    # A slack this large puts very different lengths in one batch: lots of padding.
    batched = run_batched(
        engine,
        sequences,
        all_patterns=True,
        patterns=[(1, 2)],
        vectors=True,
        length_slack=1000,
        max_batch_tokens=100_000,
    )
    assert len(length_groups([len(ids) for ids in sequences], length_slack=1000)) == 1
    assert len({piece.length for piece in batched}) == len(sequences)
    for ids, piece in zip(sequences, batched, strict=True):
        single = engine.run(torch.tensor([ids]), all_patterns=True, patterns=[(1, 2)], vectors=True)
        assert piece.length == len(ids)
        assert piece.activity.shape == single.activity[0].shape
        pairs = [
            (piece.activity, single.activity[0]),
            (piece.all_patterns, single.all_patterns[0]),
            (piece.patterns[(1, 2)], single.patterns[(1, 2)][0]),
            (piece.keys, single.keys[0]),
            (piece.values, single.values[0]),
        ]
        for batched_value, single_value in pairs:
            assert batched_value.shape == single_value.shape
            assert (batched_value - single_value).abs().max().item() <= TOLERANCE


def test_length_groups_bound_padding_and_batch_tokens():
    lengths = [512, 500, 130, 128, 127, 90, 10, 9, 8, 300]
    groups = length_groups(lengths, max_batch_tokens=1024, length_slack=1.25)
    assert sorted(index for group in groups for index in group) == list(range(len(lengths)))
    for group in groups:
        longest = max(lengths[index] for index in group)
        assert len(group) * longest <= 1024 or len(group) == 1
        assert all(longest <= lengths[index] * 1.25 for index in group)


def test_pad_batch_right_pads():
    batch = pad_batch([[5, 6, 7], [8]])
    assert batch.tolist() == [[5, 6, 7], [8, 0, 0]]


def test_shortest_first_groups_keep_the_token_and_cell_budgets():
    """The corpus analysis's batches: shortest first, within a token and a cell budget."""
    lengths = [random.Random(seed).randint(1, 512) for seed in range(300)]
    tokens, cells = 8192, 1 << 19
    groups = length_groups(
        lengths,
        max_batch_tokens=tokens,
        max_batch_cells=cells,
        length_slack=None,
        longest_first=False,
    )
    seen = []
    for group in groups:
        longest = max(lengths[i] for i in group)
        assert lengths[group[-1]] == longest  # the batch's width is its last sequence's length
        if len(group) > 1:
            assert len(group) * longest <= tokens
            assert len(group) * longest * longest <= cells
        seen.extend(group)
    assert sorted(seen) == list(range(len(lengths)))
    assert [lengths[i] for i in seen] == sorted(lengths)  # similar lengths share a batch


def test_fixed_size_groups_in_input_order_for_ties():
    """The probe extraction's batches: longest first, a fixed count each, ties in input order."""
    lengths = [3, 5, 3, 5, 1, 3]
    groups = length_groups(lengths, max_batch=2, max_batch_tokens=None, length_slack=None)
    assert groups == [[1, 3], [0, 2], [5, 4]]
