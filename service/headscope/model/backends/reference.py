"""The reference backend: GPT-Neo's block spelled out op by op, the way the checkpoint stores it.

Separate q, k and v projections, scores masked by replacing hidden entries with float32's
minimum (as Hugging Face does), softmax, z = pattern · v, and the attention output as the sum of
the heads' contributions plus out_proj's bias. The fast backends are tested against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from headscope.model.activity import ActivityFormula, head_contributions
from headscope.model.backends.base import ForwardRequest, Geometry, LayerOutput, LayerWeights


class ReferenceBackend:
    name = "reference"

    def __init__(
        self,
        geometry: Geometry,
        layers: Sequence[LayerWeights],
        activation: Callable[[Tensor], Tensor],
        activity: ActivityFormula,
    ) -> None:
        self.geometry = geometry
        self.layers = layers
        self.activation = activation
        self.activity = activity

    def unsupported(self, request: ForwardRequest) -> str | None:
        return None  # any geometry, activation, activity formula and output

    def parts(self, batch: int, length: int, request: ForwardRequest) -> int:
        return 1

    def start(self, hidden: Tensor, request: ForwardRequest, *, one_thread: bool) -> _ReferencePass:
        return _ReferencePass(self, hidden, request)


class _ReferencePass:
    def __init__(self, backend: ReferenceBackend, hidden: Tensor, request: ForwardRequest) -> None:
        self.backend = backend
        self.hidden = hidden  # [batch, token, d_model]
        self.request = request

    def block(
        self,
        layer: int,
        activity: Tensor,
        patterns: Tensor | None,
        pattern_heads: list[int],
        *,
        last: bool,
    ) -> LayerOutput:
        g, weights = self.backend.geometry, self.backend.layers[layer]
        batch, length, _ = self.hidden.shape

        def split_heads(projected: Tensor) -> Tensor:
            return projected.view(batch, length, g.n_heads, g.d_head).transpose(1, 2)

        normed = F.layer_norm(self.hidden, (g.d_model,), *weights.ln_1)
        query = split_heads(F.linear(normed, weights.w_q))  # [batch, head, token, d_head]
        key = split_heads(F.linear(normed, weights.w_k))
        value = split_heads(F.linear(normed, weights.w_v))

        # GPT-Neo does not divide scores by sqrt(d_head): the model was trained without it.
        scores = torch.matmul(query, key.transpose(-1, -2))  # [batch, head, q, k]
        visible = g.causal_mask(layer, length)
        scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
        pattern = torch.softmax(scores, dim=-1)  # [batch, head, q, k]
        z = torch.matmul(pattern, value)  # [batch, head, token, d_head]
        if self.request.ablation is not None:
            z = self.request.ablation.apply(layer, z)

        contribution = head_contributions(z, weights.w_o_by_head_t)  # [b, head, token, d_model]
        activity.copy_(self.backend.activity(z, weights.w_o_by_head_t, None))
        attention_output = contribution.sum(dim=1) + weights.b_o  # [batch, token, d_model]
        if patterns is not None:
            patterns.copy_(pattern[:, pattern_heads])

        output = LayerOutput()
        if self.request.vectors:
            output.query, output.key, output.value = query, key, value
        if self.request.contributions:
            output.contribution, output.attention_output = contribution, attention_output
        if self.request.z:
            output.z = z
        if not last:
            hidden = self.hidden + attention_output
            normed = F.layer_norm(hidden, (g.d_model,), *weights.ln_2)
            inner = F.linear(normed, weights.w_fc, weights.b_fc)  # [batch, token, d_mlp]
            self.hidden = hidden + F.linear(
                self.backend.activation(inner), weights.w_proj, weights.b_proj
            )
        return output

    def residual(self) -> Tensor:
        return self.hidden  # each block replaces it, never writes into it
