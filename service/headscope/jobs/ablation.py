"""The `ablation` job kind: single-head ablations over a whole corpus, as float64 sums.

For every sequence, the clean next-token losses and those with each chosen head ablated alone
(`Runner.single_head_losses`, the all-heads grid's computation), grouped by the POS tag of the
next token. Per shard the sums are the sufficient statistics of the mean loss change per
(layer, head, next tag), so the reduce is the key-wise sum of `headscope.jobs.statistics`:

ablation.predictions [tag]                     predictions of a next token with the tag
ablation.clean_loss [tag]                      their summed clean loss
ablation.change [layer, head, tag]             summed loss change (ablated - clean)
ablation.change_squares [layer, head, tag]     summed squared loss change, per prediction
ablation.sequence_change_squares [l, h, tag]   Σ over sequences of (the sequence's summed change)²
ablation.sequence_change_predictions [l, h, t] Σ over sequences of its summed change x its count
ablation.sequence_prediction_squares [tag]     Σ over sequences of (its count)²
ablation.sequences_with_tag [tag]              sequences with at least one such prediction

The per-sequence squares are what a variance of the ratio over sequences needs (the job's
answers give no interval yet, like the other job answers). Heads not chosen stay zero; job.json
says which were run.

Mean ablation takes the heads' mean z from the job's own corpus, exactly as the server takes it
from its corpus (`headscope.analysis.ablation`: the same seeded draw of MEAN_SEQUENCES sequences,
cut to max_tokens): computed once by the driver before the shards, written to job.json with the
corpus's sha256, and sent to every worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from headscope.analysis.ablation import MEAN_SEED, mean_sample, mean_z_of
from headscope.analysis.bootstrap import support_warning
from headscope.errors import InvalidRequest, NotFound, StartupError
from headscope.jobs.source import CorpusFile
from headscope.jobs.statistics import Sums, encode_truncated, require_head, tag_vocabulary
from headscope.schemas import (
    AblationMeans,
    AblationTagRow,
    CorpusAblationResponse,
    CorpusSource,
    HeadRef,
)

ABLATION = "ablation"
MODES = ("zero", "mean")


@dataclass(frozen=True)
class AblationJob:
    """What an ablation job ablates: `mode`, and `heads` ((layer, head) pairs; None: all)."""

    mode: str = "zero"
    heads: tuple[tuple[int, int], ...] | None = None
    mean_z: tuple[float, ...] | None = None  # [layer, head, d_head] flattened; mode mean
    means: dict[str, Any] | None = None  # where mean_z comes from (AblationMeans)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise StartupError(f"unknown ablation mode {self.mode!r}; choose from zero, mean")
        if self.heads is not None and (not self.heads or len(set(self.heads)) != len(self.heads)):
            raise StartupError("ablation heads: give each head once, at least one")

    def identity(self) -> dict[str, Any]:
        return {"mode": self.mode, "heads": None if self.heads is None else sorted(self.heads)}

    def head_list(self, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
        if self.heads is None:
            return [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        for layer, head in self.heads:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise StartupError(
                    f"L{layer}H{head} does not exist: the model has {n_layers} layers x "
                    f"{n_heads} heads"
                )
        return sorted(self.heads)

    def describe(self) -> dict[str, Any]:
        """The job.json entry: mode, heads run, and the means' source."""
        heads = None if self.heads is None else [list(h) for h in sorted(self.heads)]
        return {"mode": self.mode, "heads": heads, "means": self.means}


def parse_heads(text: str) -> tuple[tuple[int, int], ...]:
    """`L.H,L.H,...` (e.g. `2.0,5.5`) as (layer, head) pairs."""
    heads = []
    for part in text.split(","):
        layer, dot, head = part.strip().partition(".")
        if not dot or not layer.isdigit() or not head.isdigit():
            raise StartupError(
                f"--ablation-heads takes LAYER.HEAD,... (e.g. 2.0,5.5), not {part!r}"
            )
        heads.append((int(layer), int(head)))
    return tuple(heads)


def with_means(ablation: AblationJob, corpus: CorpusFile, runtime) -> AblationJob:
    """`ablation` with its mean z (mode mean), from the job's corpus as the server draws it."""
    if ablation.mode != "mean" or ablation.mean_z is not None:
        return ablation
    n_sequences = sum(1 for _ in corpus.sequences())
    if not n_sequences:
        raise StartupError(f"{corpus.label} holds no sequences to take the mean z over")
    wanted = set(mean_sample(n_sequences))
    id_lists: dict[int, list[int]] = {}
    for index, text in enumerate(corpus.sequences()):
        if index in wanted:
            id_lists[index] = encode_truncated(runtime, text)[0].ids
    # In the draw's order, as the server sums them (float64 sums: the order is round-off only).
    ordered = [id_lists[index] for index in mean_sample(n_sequences)]
    mean, tokens = mean_z_of(runtime, ordered)
    means = AblationMeans(
        corpus=Path(corpus.label).name,
        corpus_sha256=corpus.sha256,
        seed=MEAN_SEED,
        sequences=len(ordered),
        tokens=tokens,
    )
    return replace(ablation, mean_z=tuple(mean.ravel().tolist()), means=means.model_dump())


def ablation_sums(runtime, texts: Sequence[str], ablation: AblationJob) -> Sums:
    """The ablation sums of one shard's sequences (see the module's docstring)."""
    g = runtime.geometry
    vocabulary = tag_vocabulary(runtime)
    tag_index = {tag: i for i, tag in enumerate(vocabulary)}
    n_tags = len(vocabulary)
    heads = ablation.head_list(g.n_layers, g.n_heads)
    layers = np.array([layer for layer, _ in heads])
    columns = np.array([head for _, head in heads])
    mean_z = None
    if ablation.mean_z is not None:
        mean_z = np.asarray(ablation.mean_z, dtype=np.float32).reshape(
            g.n_layers, g.n_heads, g.d_head
        )
    grid = (g.n_layers, g.n_heads, n_tags)
    sums: Sums = {
        "ablation.predictions": np.zeros(n_tags),
        "ablation.clean_loss": np.zeros(n_tags),
        "ablation.change": np.zeros(grid),
        "ablation.change_squares": np.zeros(grid),
        "ablation.sequence_change_squares": np.zeros(grid),
        "ablation.sequence_change_predictions": np.zeros(grid),
        "ablation.sequence_prediction_squares": np.zeros(n_tags),
        "ablation.sequences_with_tag": np.zeros(n_tags),
    }
    for text in texts:
        encoded, _ = encode_truncated(runtime, text)
        if len(encoded) < 2:
            continue
        next_tags = runtime.tags(encoded)[1:]
        clean, ablated = runtime.runner.single_head_losses(encoded.ids, heads, mean_z=mean_z)
        # The float32 difference, as the corpus endpoint takes it, then float64 sums.
        change = (ablated - clean).astype(np.float64)  # [head, position]
        one_hot = np.eye(n_tags)[[tag_index[tag] for tag in next_tags]]  # [position, tag]
        counts = one_hot.sum(axis=0)  # [tag]
        per_sequence = change @ one_hot  # [head, tag]
        sums["ablation.predictions"] += counts
        sums["ablation.clean_loss"] += clean.astype(np.float64) @ one_hot
        sums["ablation.change"][layers, columns] += per_sequence
        sums["ablation.change_squares"][layers, columns] += (change**2) @ one_hot
        sums["ablation.sequence_change_squares"][layers, columns] += per_sequence**2
        sums["ablation.sequence_change_predictions"][layers, columns] += per_sequence * counts
        sums["ablation.sequence_prediction_squares"] += counts**2
        sums["ablation.sequences_with_tag"] += counts > 0
    return sums


# -- the server's answers ------------------------------------------------------------------------


def ablation_response(
    job, source: CorpusSource, sums: Sums, tags: dict[str, int], query
) -> CorpusAblationResponse:
    """A job's answer to `query` (CorpusJobAblationQuery): one head's mean loss change per next
    tag (layer and head given), or the grid of every head the job ran for `tag`."""
    entry = job.ablation
    assert entry is not None
    change = sums["ablation.change"]  # [layer, head, tag]
    n_layers, n_heads = change.shape[:2]
    run = (
        {(layer, head) for layer in range(n_layers) for head in range(n_heads)}
        if entry.heads is None
        else {(ref.layer, ref.head) for ref in entry.heads}
    )
    chosen_tag = None
    if query.tag is not None:
        if query.tag not in tags:
            raise InvalidRequest(
                f"tag {query.tag!r} is not a tag the job's tagger produces; tags are: "
                + ", ".join(sorted(tags)),
                detail={"tag": query.tag, "tags": sorted(tags)},
            )
        chosen_tag = tags[query.tag]
    predictions = sums["ablation.predictions"]  # [tag]
    clean = sums["ablation.clean_loss"]
    with_tag = sums["ablation.sequences_with_tag"]
    common = {"mode": entry.mode, "means": entry.means, "source": source, "ci": None}
    if query.layer is not None:
        layer, head = query.layer, query.head
        require_head(layer, head, n_layers, n_heads)
        if (layer, head) not in run:
            raise NotFound(
                f"corpus job {job.id} did not ablate L{layer}H{head}",
                detail={"job": job.id, "layer": layer, "head": head},
            )
        columns = [chosen_tag] if chosen_tag is not None else range(len(predictions))
        names = {index: tag for tag, index in tags.items()}
        rows = []
        for column in columns:
            count = int(predictions[column])
            if not count:
                continue
            mean_before = clean[column] / count
            mean_change = change[layer, head, column] / count
            rows.append(
                AblationTagRow(
                    tag=names[column],
                    tokens=count,
                    mean_loss_before=float(mean_before),
                    mean_loss_after=float(mean_before + mean_change),
                    mean_loss_change=float(mean_change),
                )
            )
        rows.sort(key=lambda row: (-row.mean_loss_change, row.tag))
        counted = int(predictions.sum()) if chosen_tag is None else int(predictions[chosen_tag])
        warning = None
        if chosen_tag is not None:
            warning = support_warning(
                counted, int(with_tag[chosen_tag]), f"predictions of {query.tag}"
            )
        return CorpusAblationResponse(
            heads=[HeadRef(layer=layer, head=head)],
            tag=query.tag,
            by_next_tag=rows,
            predictions=counted,
            warning=warning,
            **common,
        )
    assert chosen_tag is not None
    count = int(predictions[chosen_tag])
    grid = None
    if count:
        grid = [
            [
                float(change[layer, head, chosen_tag] / count) if (layer, head) in run else None
                for head in range(n_heads)
            ]
            for layer in range(n_layers)
        ]
    return CorpusAblationResponse(
        heads=None,
        tag=query.tag,
        predictions=count,
        mean_loss_before=float(clean[chosen_tag] / count) if count else None,
        grid=grid,
        warning=support_warning(count, int(with_tag[chosen_tag]), f"predictions of {query.tag}"),
        **common,
    )
