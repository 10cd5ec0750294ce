"""What the engine's layer loop shares with its backends: the model's geometry, one block's
weights as plain tensors, what a forward pass keeps, and the Backend protocol.

A backend computes one GPT-Neo block at a time (`Pass.block`); the engine owns the embeddings,
the output buffers and the collecting of what a request keeps. A backend says what it cannot
compute (`unsupported`), and the engine then asks the next one, so no request is ever answered
by a backend that would get it wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from headscope.model.loading import ModelConfig


def gelu_new(x: Tensor) -> Tensor:
    """Hugging Face's "gelu_new" exactly as it writes it: GPT-2's tanh approximation, op by op."""
    return (
        0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    )


def gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def gelu_tanh_by_sigmoid(x: Tensor) -> Tensor:
    """The tanh-GELU as x·sigmoid(2u), u = √(2/π)(x + 0.044715x³): the same function, since
    0.5(1 + tanh(u)) = sigmoid(2u). This torch build's tanh runs scalar and its sigmoid
    vectorized (bench/README.md has the numbers)."""
    inner = torch.addcmul(x, x * x, x, value=0.044715)
    return torch.sigmoid_(inner.mul_(2.0 * math.sqrt(2.0 / math.pi))).mul_(x)


# config.json's activation_function -> (fast backends', reference backend's). The fast ones
# compute the tanh-GELU through a sigmoid; the reference keeps HF's op-by-op formula. Names are
# Hugging Face's (ACT2FN); the loader refuses any other.
ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "gelu_new": (gelu_tanh_by_sigmoid, gelu_new),
    "gelu_pytorch_tanh": (gelu_tanh_by_sigmoid, gelu_tanh),
    "gelu": (F.gelu, F.gelu),
    "relu": (F.relu, F.relu),
    "silu": (F.silu, F.silu),
    "swish": (F.silu, F.silu),
}


@dataclass(frozen=True)
class Geometry:
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    window_size: int
    attention_layers: tuple[str, ...]
    max_positions: int

    @classmethod
    def of(cls, config: ModelConfig) -> Geometry:
        return cls(
            n_layers=config.num_layers,
            n_heads=config.num_heads,
            d_head=config.hidden_size // config.num_heads,
            d_model=config.hidden_size,
            window_size=config.window_size,
            attention_layers=config.attention_layers,
            max_positions=config.max_position_embeddings,
        )

    def window(self, layer: int) -> int:
        """Keys a query may see on this layer, counting itself (0: all earlier keys)."""
        return self.window_size if self.attention_layers[layer] == "local" else 0

    def causal_mask(self, layer: int, length: int) -> Tensor:
        """[q, k] True where query q may see key k."""
        positions = torch.arange(length)
        offsets = positions[:, None] - positions[None, :]  # q - k
        visible = offsets >= 0
        if self.attention_layers[layer] == "local":
            # Local layers look back over a sliding window only: the query itself and the
            # window_size - 1 positions before it.
            visible &= offsets < self.window_size
        return visible


@dataclass(frozen=True)
class LayerWeights:
    """One block's weights as plain tensors, so no backend goes through nn.Module dispatch."""

    ln_1: tuple[Tensor, Tensor, float]  # weight, bias, eps
    ln_2: tuple[Tensor, Tensor, float]
    w_q: Tensor  # [d_model, d_model], as the checkpoint stores them (no bias)
    w_k: Tensor
    w_v: Tensor
    w_qkv: Tensor  # [3 * d_model, d_model]: w_q, w_k, w_v stacked
    w_o: Tensor  # [d_model, d_model]
    b_o: Tensor  # [d_model]
    w_o_by_head_t: Tensor  # [head, d_head, d_model]: contribution c_h = z_h @ this[h]
    w_fc: Tensor
    b_fc: Tensor
    w_proj: Tensor
    b_proj: Tensor
    # The same weights as transposed views, [in, out], for torch.mm/addmm on [rows, in] inputs:
    # what F.linear does inside, without its per-call reshaping.
    w_qkv_t: Tensor
    w_o_t: Tensor
    w_fc_t: Tensor
    w_proj_t: Tensor

    @classmethod
    def of(cls, config: ModelConfig, tensors: Mapping[str, Tensor], layer: int) -> LayerWeights:
        """`tensors`: float32, named as in GPTNeoModel's state dict (`h.0.ln_1.weight`, ...)."""

        def tensor(name: str) -> Tensor:
            return tensors[f"h.{layer}.{name}"]

        geometry = Geometry.of(config)
        eps = config.layer_norm_epsilon
        w_q, w_k, w_v = (tensor(f"attn.attention.{p}_proj.weight") for p in "qkv")
        w_qkv = torch.cat([w_q, w_k, w_v]).contiguous()
        w_o = tensor("attn.attention.out_proj.weight")
        # out_proj.weight is [d_model(out), d_model(in)], and head h reads input columns
        # h*d_head:(h+1)*d_head.
        w_o_by_head_t = (
            w_o.view(geometry.d_model, geometry.n_heads, geometry.d_head)
            .permute(1, 2, 0)
            .contiguous()
        )  # [head, d_head, d_model]
        return cls(
            ln_1=(tensor("ln_1.weight"), tensor("ln_1.bias"), eps),
            ln_2=(tensor("ln_2.weight"), tensor("ln_2.bias"), eps),
            w_q=w_q,
            w_k=w_k,
            w_v=w_v,
            w_qkv=w_qkv,
            w_o=w_o,
            b_o=tensor("attn.attention.out_proj.bias"),
            w_o_by_head_t=w_o_by_head_t,
            w_fc=tensor("mlp.c_fc.weight"),
            b_fc=tensor("mlp.c_fc.bias"),
            w_proj=tensor("mlp.c_proj.weight"),
            b_proj=tensor("mlp.c_proj.bias"),
            w_qkv_t=w_qkv.t(),
            w_o_t=w_o.t(),
            w_fc_t=tensor("mlp.c_fc.weight").t(),
            w_proj_t=tensor("mlp.c_proj.weight").t(),
        )


@dataclass(frozen=True, eq=False)
class Ablation:
    """Which heads each sequence of a batch ablates, and what their z becomes: each ablated
    head's z (pattern · values, its input to W_O) is replaced before W_O, at every token."""

    heads: Tensor  # [batch or 1, layer, head] bool: True where the head is ablated
    values: Tensor  # [layer, head, d_head]: zeros (zero ablation) or the head's mean z

    def layer_has_any(self, layer: int) -> bool:
        return bool(self.heads[:, layer].any())

    def apply(self, layer: int, z: Tensor) -> Tensor:
        """z [batch, head, token, d_head] with this layer's ablated heads replaced."""
        if not self.layer_has_any(layer):
            return z
        ablated = self.heads[:, layer, :, None, None]  # [batch, head, 1, 1]
        return torch.where(ablated, self.values[layer][None, :, None, :], z)


@dataclass(frozen=True)
class ForwardRequest:
    """What one forward pass keeps besides activity, and what it changes (an ablation)."""

    last_layer: int
    patterns: frozenset[tuple[int, int]] = frozenset()  # (layer, head)
    all_patterns: bool = False
    vectors: bool = False  # keys, queries, values
    contributions: bool = False  # per-head contributions and attention outputs
    z: bool = False  # every head's z, its input to W_O
    # The residual stream after the last layer's MLP (for the logits): the last block runs whole.
    final: bool = False
    ablation: Ablation | None = field(default=None, compare=False)

    def pattern_heads(self, layer: int, n_heads: int) -> list[int]:
        """The heads of `layer` whose patterns the pass writes out."""
        if self.all_patterns:
            return list(range(n_heads))
        return sorted(head for (kept_layer, head) in self.patterns if kept_layer == layer)


@dataclass
class LayerOutput:
    """What a block hands back beyond activity and patterns (written into the engine's buffers).
    Only what the request asked for is set."""

    query: Tensor | None = None  # [batch, head, token, d_head]
    key: Tensor | None = None
    value: Tensor | None = None
    contribution: Tensor | None = None  # [batch, head, token, d_model]
    attention_output: Tensor | None = None  # [batch, token, d_model], out_proj bias included
    z: Tensor | None = None  # [batch, head, token, d_head], after any ablation


class Pass(Protocol):
    """One forward pass of one batch through a backend, block by block."""

    def block(
        self,
        layer: int,
        activity: Tensor,  # [batch, head, token], to fill in
        patterns: Tensor | None,  # [batch, len(pattern_heads), q, k], to fill in
        pattern_heads: list[int],
        *,
        last: bool,  # no MLP after this block's attention
    ) -> LayerOutput: ...

    def residual(self) -> Tensor:
        """The residual stream after the blocks run so far, [batch, token, d_model]: a tensor
        later blocks leave unchanged."""
        ...


class Backend(Protocol):
    name: str

    def unsupported(self, request: ForwardRequest) -> str | None:
        """Why this backend cannot compute `request` (None: it can)."""
        ...

    def parts(self, batch: int, length: int, request: ForwardRequest) -> int:
        """Into how many parts of the batch the engine should split this pass, each part on its
        own thread with `one_thread=True` (1: the whole batch, on torch's threads)."""
        ...

    def start(self, hidden: Tensor, request: ForwardRequest, *, one_thread: bool) -> Pass:
        """A pass over `hidden` ([batch, token, d_model] embeddings; the pass may update it in
        place)."""
        ...
