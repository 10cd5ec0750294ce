"""The model as analysis/ sees it: token-id lists in, numpy arrays out.

`ModelRunner` owns the engine and its backends; callers never touch a tensor, so torch stays
inside headscope.model. Arrays are float32, exactly the engine's numbers, without batch axis or
padding.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from headscope.model.ablation import (
    ablation_values,
    head_mask,
    next_token_stats,
    single_head_ablations,
)
from headscope.model.backends.base import Ablation, ForwardRequest, Geometry
from headscope.model.backends.native import load_attention_kernel
from headscope.model.batching import length_groups, pad_batch, split_output
from headscope.model.engine import AnalysisEngine, EngineOutput
from headscope.model.loading import Checkpoint


@dataclass
class SequenceArrays:
    """One sequence's results; only what was asked for is set."""

    activity: np.ndarray  # [layer, head, token]
    patterns: dict[tuple[int, int], np.ndarray]  # (layer, head) -> [q, k]
    all_patterns: np.ndarray | None = None  # [layer, head, q, k]
    keys: np.ndarray | None = None  # [layer, head, token, d_head]
    queries: np.ndarray | None = None
    values: np.ndarray | None = None


@dataclass
class NextTokenArrays:
    """Per variant (row 0: no ablation, row 1: ablated) and position t: the next token's loss,
    logit and probability, and the top-k predictions."""

    loss: np.ndarray  # [variant, position]
    logit: np.ndarray
    prob: np.ndarray
    top_ids: np.ndarray  # [variant, position, k]
    top_probs: np.ndarray


def _array(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.numpy()


class ModelRunner:
    def __init__(self, model: Checkpoint) -> None:
        self.engine = AnalysisEngine(model.config, model.tensors)
        self.geometry: Geometry = self.engine.geometry

    def attach_native(self, mode: str, cache_dir: Path | None = None) -> None:
        """The C kernels as the preferred backend, per the `attention_kernel` setting: "auto"
        (where they build and pass their checks), "c" (StartupError without them), "torch"."""
        self.engine.use_kernel(load_attention_kernel(mode, cache_dir))

    def forward(
        self,
        ids: Sequence[int],
        *,
        last_layer: int | None = None,
        patterns: Iterable[tuple[int, int]] = (),
        vectors: bool = False,
    ) -> SequenceArrays:
        """One sequence through the model up to `last_layer` (default: the last)."""
        output = self.engine.run(
            torch.tensor([list(ids)], dtype=torch.long),
            last_layer=last_layer,
            patterns=patterns,
            vectors=vectors,
        )
        return self._first(output)

    def _first(self, output: EngineOutput) -> SequenceArrays:
        def first(tensor: torch.Tensor | None) -> np.ndarray | None:
            return None if tensor is None else tensor[0].numpy()

        return SequenceArrays(
            activity=output.activity[0].numpy(),
            patterns={head: pattern[0].numpy() for head, pattern in output.patterns.items()},
            all_patterns=first(output.all_patterns),
            keys=first(output.keys),
            queries=first(output.queries),
            values=first(output.values),
        )

    def batches(
        self,
        id_lists: Sequence[Sequence[int]],
        *,
        max_batch_tokens: int | None = None,
        max_batch_cells: int | None = None,
        max_batch: int | None = None,
        length_slack: float | None = None,
        longest_first: bool = True,
        last_layer: int | None = None,
        patterns: Iterable[tuple[int, int]] = (),
        all_patterns: bool = False,
        vectors: bool = False,
    ) -> Iterator[tuple[list[int], list[SequenceArrays]]]:
        """(indices into `id_lists`, their results) per right-padded batch of similar lengths
        (headscope.model.batching.length_groups' bounds)."""
        wanted = list(patterns)
        lengths = [len(ids) for ids in id_lists]
        for group in length_groups(
            lengths,
            max_batch_tokens=max_batch_tokens,
            max_batch_cells=max_batch_cells,
            max_batch=max_batch,
            length_slack=length_slack,
            longest_first=longest_first,
        ):
            output = self.engine.run(
                pad_batch([id_lists[index] for index in group]),
                last_layer=last_layer,
                patterns=wanted,
                all_patterns=all_patterns,
                vectors=vectors,
            )
            pieces = split_output(output, [lengths[index] for index in group])
            yield (
                group,
                [
                    SequenceArrays(
                        activity=piece.activity.numpy(),
                        patterns={
                            head: pattern.numpy() for head, pattern in piece.patterns.items()
                        },
                        all_patterns=_array(piece.all_patterns),
                        keys=_array(piece.keys),
                        queries=_array(piece.queries),
                        values=_array(piece.values),
                    )
                    for piece in pieces
                ],
            )

    # -- ablation -------------------------------------------------------------------------------

    def _values(self, mean_z: np.ndarray | None) -> torch.Tensor:
        return ablation_values(self.engine, None if mean_z is None else torch.from_numpy(mean_z))

    def ablate(
        self,
        ids: Sequence[int],
        heads: Sequence[tuple[int, int]],
        *,
        mean_z: np.ndarray | None = None,  # [layer, head, d_head]; None: zero ablation
        top_k: int = 0,
    ) -> NextTokenArrays:
        """The text without and with `heads` ablated together: next-token statistics for
        positions 0..len(ids) - 2."""
        input_ids = torch.tensor([list(ids)], dtype=torch.long)
        ablation = Ablation(head_mask(self.engine, heads), self._values(mean_z))
        # Both runs on one backend, so the change is the ablation's alone, not a difference in
        # float32 rounding between backends.
        backend = self.engine.backend_for(
            ForwardRequest(last_layer=self.geometry.n_layers - 1, final=True, ablation=ablation)
        ).name
        clean = self.engine.run(input_ids, final=True, backend=backend).final
        ablated = self.engine.run(input_ids, final=True, ablation=ablation, backend=backend).final
        assert clean is not None and ablated is not None
        stats = next_token_stats(
            self.engine, torch.cat([clean, ablated]), input_ids[0, 1:], top_k=top_k
        )
        return NextTokenArrays(
            loss=stats.loss.numpy(),
            logit=stats.logit.numpy(),
            prob=stats.prob.numpy(),
            top_ids=stats.top_ids.numpy(),
            top_probs=stats.top_probs.numpy(),
        )

    def single_head_losses(
        self,
        ids: Sequence[int],
        heads: Sequence[tuple[int, int]],
        *,
        mean_z: np.ndarray | None = None,
        positions: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(clean [position], ablated [head, position]): the next token's loss at `positions`
        (default: every position with a next token), with each of `heads` ablated alone; the
        shared prefix is computed once (headscope.model.ablation)."""
        all_ids = torch.tensor(list(ids), dtype=torch.long)
        chosen = None if positions is None else torch.tensor(list(positions), dtype=torch.long)
        # Attention is causal: tokens after the last position asked about change nothing there.
        length = len(ids) - 1 if chosen is None else int(chosen.max()) + 1
        clean, ablated = single_head_ablations(
            self.engine, all_ids[None, :length], heads, self._values(mean_z)
        )
        stats = next_token_stats(
            self.engine,
            torch.cat([clean[None], ablated]),
            all_ids[1 : length + 1],
            positions=chosen,
        )
        loss = stats.loss.numpy()
        return loss[0], loss[1:]

    def z_sums(self, id_lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, int]:
        """(sum of every head's z over every token, float64 [layer, head, d_head], tokens)."""
        g = self.geometry
        total = np.zeros((g.n_layers, g.n_heads, g.d_head))
        lengths = [len(ids) for ids in id_lists]
        for group in length_groups(lengths, max_batch_tokens=8192, longest_first=False):
            output = self.engine.run(pad_batch([id_lists[index] for index in group]), z=True)
            assert output.z is not None  # [batch, layer, head, token, d_head]
            for row, index in enumerate(group):
                kept = output.z[row, :, :, : lengths[index]]
                total += kept.double().sum(dim=2).numpy()
        return total, sum(lengths)

    def visible(self, layer: int, length: int) -> np.ndarray:
        """[q, k] True where query q may see key k on `layer`."""
        return self.geometry.causal_mask(layer, length).numpy()
