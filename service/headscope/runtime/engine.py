"""The analysis forward pass: per layer and head, keys, queries, values, attention patterns,
z = pattern · values, contributions z_h · W_O[:, h-slice]ᵀ and their L2 norms (activity).

This is a second implementation of GPT-Neo's attention, written from the weights, so its numbers
can be checked against Hugging Face's own forward pass. It stops after the last layer asked for
and never computes the LM head.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Geometry:
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    window_size: int
    attention_layers: tuple[str, ...]
    max_positions: int


@dataclass
class EngineOutput:
    """Results for a batch of right-padded sequences; positions past a sequence's length are junk.

    Only what was asked for is filled in; layers past `last_layer` are absent.
    """

    activity: Tensor  # [batch, layer, head, token]
    patterns: dict[tuple[int, int], Tensor] = field(default_factory=dict)  # (l, h) -> [batch, q, k]
    all_patterns: Tensor | None = None  # [batch, layer, head, q, k]
    keys: Tensor | None = None  # [batch, layer, head, token, d_head]
    queries: Tensor | None = None  # [batch, layer, head, token, d_head]
    values: Tensor | None = None  # [batch, layer, head, token, d_head]
    contributions: Tensor | None = None  # [batch, layer, head, token, d_model]
    attention_outputs: Tensor | None = None  # [batch, layer, token, d_model], incl. out_proj bias


class AnalysisEngine:
    def __init__(self, model) -> None:  # model: transformers GPTNeoModel
        config = model.config
        self.model = model
        self.geometry = Geometry(
            n_layers=config.num_layers,
            n_heads=config.num_heads,
            d_head=config.hidden_size // config.num_heads,
            d_model=config.hidden_size,
            window_size=config.window_size,
            attention_layers=tuple(config.attention_layers),
            max_positions=config.max_position_embeddings,
        )
        g = self.geometry
        # W_O split by head: out_proj.weight is [d_model(out), d_model(in)], and head h reads
        # input columns h*d_head:(h+1)*d_head.
        self._w_o_by_head = [
            block.attn.attention.out_proj.weight.detach()
            .view(g.d_model, g.n_heads, g.d_head)
            .permute(1, 0, 2)
            .contiguous()  # [head, d_model, d_head]
            for block in model.h
        ]

    def causal_mask(self, layer: int, length: int) -> Tensor:
        """[q, k] True where query q may see key k."""
        positions = torch.arange(length)
        offsets = positions[:, None] - positions[None, :]  # q - k
        visible = offsets >= 0
        if self.geometry.attention_layers[layer] == "local":
            # Local layers look back over a sliding window only: the query itself and the
            # window_size - 1 positions before it.
            visible &= offsets < self.geometry.window_size
        return visible

    @torch.inference_mode()
    def run(
        self,
        input_ids: Tensor,  # [batch, token], right-padded
        *,
        last_layer: int | None = None,
        patterns: Iterable[tuple[int, int]] = (),
        all_patterns: bool = False,
        vectors: bool = False,
        contributions: bool = False,
    ) -> EngineOutput:
        g = self.geometry
        last_layer = g.n_layers - 1 if last_layer is None else last_layer
        wanted_patterns = set(patterns)
        batch, length = input_ids.shape
        model = self.model

        positions = torch.arange(length).unsqueeze(0)
        hidden = model.wte(input_ids) + model.wpe(positions)  # [batch, token, d_model]

        activity, pattern_stack, key_stack, query_stack, value_stack = [], [], [], [], []
        contribution_stack, attention_output_stack = [], []
        kept_patterns: dict[tuple[int, int], Tensor] = {}
        for layer in range(last_layer + 1):
            block = model.h[layer]
            attention = block.attn.attention
            normed = block.ln_1(hidden)

            def split_heads(projected: Tensor) -> Tensor:
                return projected.view(batch, length, g.n_heads, g.d_head).transpose(1, 2)

            query = split_heads(attention.q_proj(normed))  # [batch, head, token, d_head]
            key = split_heads(attention.k_proj(normed))
            value = split_heads(attention.v_proj(normed))

            # GPT-Neo does not divide scores by sqrt(d_head): the model was trained without it.
            scores = torch.matmul(query.float(), key.float().transpose(-1, -2))  # [b, h, q, k]
            mask = self.causal_mask(layer, length)
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            pattern = torch.softmax(scores, dim=-1).to(value.dtype)  # [batch, head, q, k]
            z = torch.matmul(pattern, value)  # [batch, head, token, d_head]

            contribution = torch.einsum("bhtd,hmd->bhtm", z, self._w_o_by_head[layer])
            activity.append(contribution.norm(dim=-1))  # [batch, head, token]
            attention_output = contribution.sum(dim=1) + attention.out_proj.bias

            if all_patterns:
                pattern_stack.append(pattern)
            for head in range(g.n_heads):
                if (layer, head) in wanted_patterns:
                    kept_patterns[(layer, head)] = pattern[:, head]
            if vectors:
                key_stack.append(key)
                query_stack.append(query)
                value_stack.append(value)
            if contributions:
                contribution_stack.append(contribution)
                attention_output_stack.append(attention_output)

            if layer == last_layer:
                break
            hidden = hidden + attention_output
            hidden = hidden + block.mlp(block.ln_2(hidden))

        def stack(tensors: list[Tensor]) -> Tensor | None:
            return torch.stack(tensors, dim=1) if tensors else None

        return EngineOutput(
            activity=torch.stack(activity, dim=1),
            patterns=kept_patterns,
            all_patterns=stack(pattern_stack),
            keys=stack(key_stack),
            queries=stack(query_stack),
            values=stack(value_stack),
            contributions=stack(contribution_stack),
            attention_outputs=stack(attention_output_stack),
        )
