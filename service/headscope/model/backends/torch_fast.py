"""The torch backend: the reference's arithmetic in fewer, larger torch kernels.

One fused QKV projection, the causal mask added inside the score GEMM (baddbmm), softmax in
place, patterns written straight into their output buffer, long sequences in blocks of query
rows over only the keys they can see, and the tanh-GELU through a sigmoid. Its numbers differ
from the reference only by float32 summation order (the tests hold it to 1e-5), and are the same
whatever a request keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from headscope.model.activity import ActivityFormula, head_contributions
from headscope.model.backends.base import ForwardRequest, Geometry, LayerOutput, LayerWeights

# Up to this many tokens, patterns are computed whole; longer sequences go by blocks of
# QUERY_BLOCK query rows (the crossover is measured in bench/README.md).
WHOLE_UP_TO = 192
QUERY_BLOCK = 128


class TorchBackend:
    name = "torch"

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
        self._mask_bias: dict[str, Tensor] = {}

    def unsupported(self, request: ForwardRequest) -> str | None:
        return None  # any geometry, activation, activity formula and output

    def parts(self, batch: int, length: int, request: ForwardRequest) -> int:
        return 1

    def start(self, hidden: Tensor, request: ForwardRequest, *, one_thread: bool) -> _TorchPass:
        return _TorchPass(self, hidden, request)

    def mask_bias(self, layer: int, length: int) -> Tensor:
        """[q, k] additive mask: 0 where visible, float32 min where not (as HF fills it).

        Adding the minimum instead of replacing by it gives the same softmax: a hidden score ends
        at or below the minimum either way, and exp() of it underflows to exactly 0. Built once
        per attention type, for the next power of two of the length, and sliced.
        """
        kind = self.geometry.attention_layers[layer]
        bias = self._mask_bias.get(kind)
        if bias is None or bias.shape[0] < length:
            size = max(length, min(1 << (length - 1).bit_length(), self.geometry.max_positions))
            visible = self.geometry.causal_mask(layer, size)
            bias = torch.zeros(size, size).masked_fill_(~visible, torch.finfo(torch.float32).min)
            self._mask_bias[kind] = bias
        return bias[:length, :length]

    def attend(
        self,
        layer: int,
        query: Tensor,  # [batch, head, token, d_head]
        key: Tensor,
        value: Tensor,
        pattern_heads: list[int],
        out: Tensor | None,  # [batch, len(pattern_heads), q, k], to fill in
    ) -> Tensor:
        """Attention of every head: z = softmax(q·kᵀ + mask) · v, writing the patterns of
        `pattern_heads` into `out`. Returns z, [batch, head, token, d_head].

        GPT-Neo does not divide scores by sqrt(d_head): the model was trained without it.
        Every request runs the same arithmetic whatever it keeps, so activity is bit-identical
        between a request that asks for patterns and one that does not.
        """
        batch, heads, length, d_head = query.shape
        queries = query.reshape(batch * heads, length, d_head)
        keys = key.reshape(batch * heads, length, d_head)
        values = value.reshape(batch * heads, length, d_head)
        bias = self.mask_bias(layer, length)
        every_head = len(pattern_heads) == heads

        if length <= WHOLE_UP_TO:
            scores = (
                out.view(batch * heads, length, length)
                if every_head and out is not None
                else torch.empty(batch * heads, length, length)
            )
            # The mask is added inside the GEMM (bias + q·kᵀ): one pass over the scores.
            torch.baddbmm(bias, queries, keys.transpose(1, 2), out=scores)
            torch.softmax(scores, dim=-1, out=scores)
            z = _mix_values(scores, values)
            if out is not None and not every_head:
                out.copy_(scores.view(batch, heads, length, length)[:, pattern_heads])
            return z.view(batch, heads, length, d_head)

        # Long sequences, one block of query rows at a time over the keys that block can see:
        # a query never sees later keys (nor, on local layers, keys beyond the window), so those
        # parts of a pattern are zeros that need no scores, softmax or mixing.
        window = self.geometry.window(layer) or length
        z = torch.empty_like(queries)
        for row_start in range(0, length, QUERY_BLOCK):
            row_end = min(length, row_start + QUERY_BLOCK)
            first_key = max(0, row_start - window + 1)
            scores = torch.baddbmm(
                bias[row_start:row_end, first_key:row_end],
                queries[:, row_start:row_end],
                keys[:, first_key:row_end].transpose(1, 2),
            )  # [batch·head, rows, visible keys]
            torch.softmax(scores, dim=-1, out=scores)
            z[:, row_start:row_end] = _mix_values(scores, values[:, first_key:row_end])
            if out is not None:
                kept = scores.view(batch, heads, row_end - row_start, row_end - first_key)
                if not every_head:
                    kept = kept[:, pattern_heads]
                rows = out[:, :, row_start:row_end]
                rows[..., :first_key] = 0.0
                rows[..., first_key:row_end] = kept
                rows[..., row_end:] = 0.0
        return z.view(batch, heads, length, d_head)


def _mix_values(pattern: Tensor, value: Tensor) -> Tensor:
    """z = pattern · values, [..., q, k] x [..., k, d_head] -> [..., q, d_head].

    Computed as (vᵀ · patternᵀ)ᵀ: with a small d_head the GEMM runs far faster with the long
    dimension as the output's columns than as its reduction.
    """
    return torch.matmul(value.transpose(-1, -2), pattern.transpose(-1, -2)).transpose(-1, -2)


class _TorchPass:
    def __init__(self, backend: TorchBackend, hidden: Tensor, request: ForwardRequest) -> None:
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
        backend = self.backend
        g, weights = backend.geometry, backend.layers[layer]
        batch, length, _ = self.hidden.shape
        normed = F.layer_norm(self.hidden, (g.d_model,), *weights.ln_1)
        qkv = F.linear(normed, weights.w_qkv)  # [batch, token, 3 * d_model]
        query, key, value = qkv.view(batch, length, 3, g.n_heads, g.d_head).permute(2, 0, 3, 1, 4)
        # query, key, value: [batch, head, token, d_head]
        z = backend.attend(layer, query, key, value, pattern_heads, patterns)
        if self.request.ablation is not None:
            z = self.request.ablation.apply(layer, z)
        backend.activity(z, weights.w_o_by_head_t, activity)
        merged = z.transpose(1, 2).reshape(batch, length, g.d_model)  # [batch, token, head * d]
        attention_output = F.linear(merged, weights.w_o, weights.b_o)  # [batch, token, d_model]

        output = LayerOutput()
        if self.request.vectors:
            output.query, output.key, output.value = query, key, value
        if self.request.contributions:
            output.contribution = head_contributions(z, weights.w_o_by_head_t)
            output.attention_output = attention_output
        if self.request.z:
            output.z = z
        if not last:
            hidden = self.hidden + attention_output
            normed = F.layer_norm(hidden, (g.d_model,), *weights.ln_2)
            inner = F.linear(normed, weights.w_fc, weights.b_fc)  # [batch, token, d_mlp]
            self.hidden = hidden + F.linear(
                backend.activation(inner), weights.w_proj, weights.b_proj
            )
        return output

    def residual(self) -> Tensor:
        return self.hidden  # each block replaces it, never writes into it
