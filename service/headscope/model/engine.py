"""The analysis forward pass: per layer and head, keys, queries, values, attention patterns,
z = pattern · values, contributions z_h · W_O[:, h-slice]ᵀ and their L2 norms (activity).

This is a second implementation of GPT-Neo's attention, written from the weights, so its numbers
can be checked against Hugging Face's own forward pass. It stops after the last layer asked for
and never computes the LM head.

Two paths compute the same quantities:
- the plain path (`plain=True`) spells the arithmetic out op by op, and is the reference the fast
  path is tested against;
- the fast path (the default) does the same arithmetic with fewer, larger kernels: one fused QKV
  projection, the causal mask added inside the score GEMM, softmax in place, patterns written
  straight into their output buffer, long sequences in blocks of query rows over only the keys
  they can see, the fused tanh-GELU, and no nn.Module dispatch. With the C kernels attached
  (headscope.model.backends.native, the default) attention, the residual adds with their
  LayerNorms and
  the GELU run in C, the GEMMs on [token, feature] rows into reused buffers, and with one torch
  thread each block is a single C call. Its numbers differ from the plain path only by float32
  summation order (a few 1e-6 at most on the stand-in weights; the tests hold it to 1e-5), and
  are the same whatever a request keeps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from headscope.model.backends.native import SUPPORTED_D_HEAD, AttentionKernel, BlockWeights
from headscope.model.loading import ModelConfig

log = logging.getLogger("headscope.engine")

# Up to this many tokens, patterns are computed whole; longer sequences go by blocks of
# QUERY_BLOCK query rows (measured crossover ~180 tokens: whole is ~10% faster at 155 tokens,
# blocks ~20% faster at 200).
WHOLE_UP_TO = 192
QUERY_BLOCK = 128


def _gelu_new(x: Tensor) -> Tensor:
    """Hugging Face's "gelu_new" exactly as it writes it: GPT-2's tanh approximation, op by op."""
    return (
        0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    )


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu_tanh_by_sigmoid(x: Tensor) -> Tensor:
    """The tanh-GELU as x·sigmoid(2u), u = √(2/π)(x + 0.044715x³): the same function, since
    0.5(1 + tanh(u)) = sigmoid(2u). This torch build's tanh runs scalar and its sigmoid
    vectorized: 57 µs instead of 130 µs on a [128, 256] MLP input."""
    inner = torch.addcmul(x, x * x, x, value=0.044715)
    return torch.sigmoid_(inner.mul_(2.0 * math.sqrt(2.0 / math.pi))).mul_(x)


# config.json's activation_function -> (fast path's, plain path's). The fast path computes the
# tanh-GELU through a sigmoid; the plain path keeps HF's op-by-op formula as the reference. Names
# are Hugging Face's (ACT2FN); the loader refuses any other.
ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "gelu_new": (_gelu_tanh_by_sigmoid, _gelu_new),
    "gelu_pytorch_tanh": (_gelu_tanh_by_sigmoid, _gelu_tanh),
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


# With several torch threads, one sequence shorter than this runs on one thread, whole blocks at a
# time: splitting each op over 2 threads costs more than it gains below ~256 tokens (a 155-token
# forward: 3.98 ms on 1 thread, 4.83 ms on 2; break-even at 256-320).
BLOCKS_ALONE_BELOW_TOKENS = 256


@dataclass
class EngineOutput:
    """Results for a batch of right-padded sequences; positions past a sequence's length are junk.

    Only what was asked for is filled in; layers past `last_layer` are absent. The fast path
    returns `all_patterns` as a view of a [layer, batch, ...] buffer (not contiguous for batch > 1).
    """

    activity: Tensor  # [batch, layer, head, token]
    patterns: dict[tuple[int, int], Tensor] = field(default_factory=dict)  # (l, h) -> [batch, q, k]
    all_patterns: Tensor | None = None  # [batch, layer, head, q, k]
    keys: Tensor | None = None  # [batch, layer, head, token, d_head]
    queries: Tensor | None = None  # [batch, layer, head, token, d_head]
    values: Tensor | None = None  # [batch, layer, head, token, d_head]
    contributions: Tensor | None = None  # [batch, layer, head, token, d_model]
    attention_outputs: Tensor | None = None  # [batch, layer, token, d_model], incl. out_proj bias


@dataclass(frozen=True)
class _LayerWeights:
    """One block's weights as plain tensors, so the fast path skips nn.Module dispatch."""

    ln_1: tuple[Tensor, Tensor, float]  # weight, bias, eps
    ln_2: tuple[Tensor, Tensor, float]
    w_qkv: Tensor  # [3 * d_model, d_model]: q_proj, k_proj, v_proj stacked (none has a bias)
    w_o: Tensor  # [d_model, d_model]
    b_o: Tensor  # [d_model]
    w_o_by_head_t: Tensor  # [head, d_head, d_model]: contribution = z_h @ this[h]
    # [head, d_head, d_head] float64, for the kernel: |z_h W_h|² = z_h · (W_h W_hᵀ) · z_h with
    # W_h = w_o_by_head_t[h]
    w_o_gram: Tensor
    w_fc: Tensor
    b_fc: Tensor
    w_proj: Tensor
    b_proj: Tensor
    # The same weights as transposed views, [in, out], for torch.mm/addmm on [rows, in] inputs:
    # what F.linear does inside, without its per-call reshaping (the kernel path's GEMMs).
    w_qkv_t: Tensor
    w_o_t: Tensor
    w_fc_t: Tensor
    w_proj_t: Tensor


class AnalysisEngine:
    def __init__(self, config: ModelConfig, tensors: Mapping[str, Tensor]) -> None:
        """`tensors`: float32, named as in GPTNeoModel's state dict (`h.0.ln_1.weight`, ...)."""
        self.config = config
        self.tensors = tensors
        self._part_pools = {}
        self.geometry = Geometry(
            n_layers=config.num_layers,
            n_heads=config.num_heads,
            d_head=config.hidden_size // config.num_heads,
            d_model=config.hidden_size,
            window_size=config.window_size,
            attention_layers=config.attention_layers,
            max_positions=config.max_position_embeddings,
        )
        g = self.geometry
        # W_O split by head: out_proj.weight is [d_model(out), d_model(in)], and head h reads
        # input columns h*d_head:(h+1)*d_head.
        self._w_o_by_head = [
            self._block_tensor(layer, "attn.attention.out_proj.weight")
            .view(g.d_model, g.n_heads, g.d_head)
            .permute(1, 0, 2)
            .contiguous()  # [head, d_model, d_head]
            for layer in range(g.n_layers)
        ]
        self._layers = [self._layer_weights(layer) for layer in range(g.n_layers)]
        self._wte = tensors["wte.weight"]  # [vocab, d_model]
        self._wpe = tensors["wpe.weight"]  # [position, d_model]
        self._activation, self._reference_activation = ACTIVATIONS[config.activation_function]
        self._mask_bias: dict[str, Tensor] = {}

    def _block_tensor(self, layer: int, name: str) -> Tensor:
        return self.tensors[f"h.{layer}.{name}"]

    def _layer_weights(self, layer: int) -> _LayerWeights:
        def tensor(name: str) -> Tensor:
            return self._block_tensor(layer, name)

        eps = self.config.layer_norm_epsilon
        w_o_by_head_t = self._w_o_by_head[layer].transpose(1, 2).contiguous()
        w_qkv = torch.cat(
            [
                tensor("attn.attention.q_proj.weight"),
                tensor("attn.attention.k_proj.weight"),
                tensor("attn.attention.v_proj.weight"),
            ]
        ).contiguous()
        return _LayerWeights(
            ln_1=(tensor("ln_1.weight"), tensor("ln_1.bias"), eps),
            ln_2=(tensor("ln_2.weight"), tensor("ln_2.bias"), eps),
            w_qkv=w_qkv,
            w_o=tensor("attn.attention.out_proj.weight"),
            b_o=tensor("attn.attention.out_proj.bias"),
            w_o_by_head_t=w_o_by_head_t,
            w_o_gram=torch.matmul(w_o_by_head_t.double(), w_o_by_head_t.double().transpose(1, 2)),
            w_fc=tensor("mlp.c_fc.weight"),
            b_fc=tensor("mlp.c_fc.bias"),
            w_proj=tensor("mlp.c_proj.weight"),
            b_proj=tensor("mlp.c_proj.bias"),
            w_qkv_t=w_qkv.t(),
            w_o_t=tensor("attn.attention.out_proj.weight").t(),
            w_fc_t=tensor("mlp.c_fc.weight").t(),
            w_proj_t=tensor("mlp.c_proj.weight").t(),
        )

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
            visible = self.causal_mask(layer, size)
            bias = torch.zeros(size, size).masked_fill_(~visible, torch.finfo(torch.float32).min)
            self._mask_bias[kind] = bias
        return bias[:length, :length]

    def run(
        self,
        input_ids: Tensor,  # [batch, token], right-padded
        *,
        last_layer: int | None = None,
        patterns: Iterable[tuple[int, int]] = (),
        all_patterns: bool = False,
        vectors: bool = False,
        contributions: bool = False,
        plain: bool = False,
    ) -> EngineOutput:
        """One forward pass up to `last_layer` (default: the last), keeping what was asked for.

        `plain=True` runs the op-by-op reference implementation instead of the fast path.
        """
        options = dict(
            last_layer=self.geometry.n_layers - 1 if last_layer is None else last_layer,
            wanted_patterns=set(patterns),
            all_patterns=all_patterns,
            vectors=vectors,
            contributions=contributions,
        )
        with torch.inference_mode():
            if plain:
                return self._run_plain(input_ids, **options)
            if self._whole_blocks_per_thread(
                input_ids,
                patterns=options["wanted_patterns"],
                vectors=vectors,
                contributions=contributions,
            ):
                return self._run_split(input_ids, **options)
            return self._run_fast(input_ids, **options)

    # -- more than one torch thread: whole blocks, one thread per part of the batch ---------------

    def _whole_blocks_per_thread(
        self, input_ids: Tensor, *, patterns: set, vectors: bool, contributions: bool
    ) -> bool:
        """With several torch threads the per-op path splits each op over them, which costs more
        than it gains on short inputs: sequences then go to the one-thread whole-block path
        instead, a share of the batch per thread (activity and all patterns only)."""
        threads = torch.get_num_threads()
        batch, length = input_ids.shape
        return (
            self._blocks is not None
            and threads > 1
            and not (patterns or vectors or contributions)
            and (batch > 1 or length < BLOCKS_ALONE_BELOW_TOKENS)
        )

    def _run_split(
        self, input_ids: Tensor, *, last_layer: int, all_patterns: bool, **options
    ) -> EngineOutput:
        g = self.geometry
        batch, length = input_ids.shape
        n_layers = last_layer + 1
        activity = torch.empty(n_layers, batch, g.n_heads, length)
        pattern_store = (
            torch.empty(n_layers, batch, g.n_heads, length, length) if all_patterns else None
        )
        parts = [
            part for part in torch.arange(batch).tensor_split(torch.get_num_threads()) if len(part)
        ]

        def run_part(part: Tensor) -> None:
            first, end = int(part[0]), int(part[-1]) + 1
            with torch.inference_mode():  # per thread
                self._run_fast(
                    input_ids[first:end],
                    last_layer=last_layer,
                    all_patterns=all_patterns,
                    one_thread_blocks=True,
                    activity=activity[:, first:end],
                    pattern_store=None if pattern_store is None else pattern_store[:, first:end],
                    **options,
                )

        if len(parts) == 1:
            run_part(parts[0])
        else:
            if self._part_pools.get(len(parts)) is None:
                self._part_pools[len(parts)] = ThreadPoolExecutor(
                    len(parts), thread_name_prefix="engine-part"
                )
            pool = self._part_pools[len(parts)]
            for done in [pool.submit(run_part, part) for part in parts]:
                done.result()
        return EngineOutput(
            activity=activity.transpose(0, 1).contiguous(),
            all_patterns=pattern_store.transpose(0, 1) if pattern_store is not None else None,
        )

    # -- the fast path ---------------------------------------------------------------------------

    def _run_fast(
        self,
        input_ids: Tensor,
        *,
        last_layer: int,
        wanted_patterns: set[tuple[int, int]],
        all_patterns: bool,
        vectors: bool,
        contributions: bool,
        one_thread_blocks: bool = False,
        activity: Tensor | None = None,
        pattern_store: Tensor | None = None,
    ) -> EngineOutput:
        """`activity` and `pattern_store` ([layer, batch, ...] views of a larger batch's
        buffers) receive the results when given; `one_thread_blocks` takes the whole-block path
        whatever torch's thread count (its C calls run on the calling thread)."""
        g = self.geometry
        batch, length = input_ids.shape
        n_layers = last_layer + 1
        hidden = F.embedding(input_ids, self._wte) + self._wpe[:length]  # [batch, token, d_model]
        kernel = self.kernel
        # One C call per block where the kernel offers it, with a single torch thread: that call
        # runs attention's (sequence, head) pairs on one thread, the per-op calls below split
        # them over torch's threads. Both run the same operations in the same order.
        one_thread = one_thread_blocks or torch.get_num_threads() == 1
        blocks = self._blocks if kernel is not None and one_thread else None
        if kernel is not None:
            # With the C kernels, each residual add is fused into the LayerNorm after it (hidden
            # is updated in place; the MLP's output waits in `pending` for the next layer's ln_1),
            # the tanh-GELU runs in place, and the GEMMs run on [batch * token, features] rows
            # into buffers reused by every layer (except those an output keeps views of).
            rows = batch * length
            normed = torch.empty_like(hidden)
            normed_rows = normed.view(rows, g.d_model)
            inner = torch.empty(rows, self._layers[0].w_fc.shape[0])  # [rows, d_mlp]
            mlp = torch.empty_like(hidden)
            mlp_rows = mlp.view(rows, g.d_model)
            pending: Tensor | None = None
            shared_qkv = None if vectors else torch.empty(rows, 3 * g.d_model)
            shared_z = None if contributions else torch.empty(rows, g.d_model)
            shared_output = None if contributions else torch.empty(rows, g.d_model)
        activation = self._activation
        if kernel is not None and activation is _gelu_tanh_by_sigmoid:
            activation = kernel.gelu_tanh_

        if activity is None:
            activity = torch.empty(
                n_layers, batch, g.n_heads, length
            )  # [layer, batch, head, token]
        # Patterns are written straight into their final home: no per-layer list, no stack copy.
        if pattern_store is None and all_patterns:
            pattern_store = torch.empty(n_layers, batch, g.n_heads, length, length)
        # [layer, batch, head, q, k]
        key_stack, query_stack, value_stack = [], [], []
        contribution_stack, attention_output_stack = [], []
        kept_patterns: dict[tuple[int, int], Tensor] = {}

        for layer in range(n_layers):
            weights = self._layers[layer]
            pattern_heads = (
                list(range(g.n_heads))
                if all_patterns
                else sorted(head for (lay, head) in wanted_patterns if lay == layer)
            )
            out = pattern_store[layer] if pattern_store is not None else None
            if kernel is not None and out is None and pattern_heads:
                out = torch.empty(batch, len(pattern_heads), length, length)
            contribution = None
            if kernel is not None and blocks is not None:
                qkv_rows = torch.empty(rows, 3 * g.d_model) if shared_qkv is None else shared_qkv
                merged = torch.empty(rows, g.d_model) if shared_z is None else shared_z
                attention_output = (
                    torch.empty(rows, g.d_model) if shared_output is None else shared_output
                )
                kernel.block_forward(
                    blocks[layer], batch, length, hidden, pending, normed_rows, qkv_rows, merged,
                    attention_output, inner, mlp_rows, activity[layer], out, pattern_heads,
                    last=layer == last_layer,
                )  # fmt: skip
                pending = mlp
                pattern = out
                attention_output = attention_output.view(batch, length, g.d_model)
            elif kernel is not None:
                kernel.add_layer_norm(hidden, pending, *weights.ln_1, out=normed)
                qkv_rows = torch.mm(normed_rows, weights.w_qkv_t, out=shared_qkv)
                merged = kernel.attend(
                    qkv_rows.view(batch, length, -1), g.n_heads, self._window(layer),
                    weights.w_o_gram, activity[layer], out, pattern_heads,
                ).view(rows, g.d_model)  # fmt: skip  # [batch * token, head * d_head]
                pattern = out
                attention_output = torch.addmm(
                    weights.b_o, merged, weights.w_o_t, out=shared_output
                ).view(batch, length, g.d_model)
            else:
                normed = F.layer_norm(hidden, (g.d_model,), *weights.ln_1)
                qkv_rows = F.linear(normed, weights.w_qkv)  # [batch, token, 3 * d_model]
            if kernel is None or vectors:
                qkv = qkv_rows.view(batch, length, 3, g.n_heads, g.d_head).permute(2, 0, 3, 1, 4)
                query, key, value = qkv[0], qkv[1], qkv[2]  # each [batch, head, token, d_head]
            if kernel is None:
                # pattern: [batch, len(pattern_heads), q, k] or None; z: [batch, head, token, d]
                pattern, z = self._attend(layer, query, key, value, pattern_heads, out)
                contribution = torch.matmul(z, weights.w_o_by_head_t)  # [b, head, token, d_model]
                torch.linalg.vector_norm(contribution, dim=-1, out=activity[layer])
                merged = z.transpose(1, 2).reshape(batch, length, g.d_model)  # [b, token, h*d]
                attention_output = F.linear(merged, weights.w_o, weights.b_o)  # [b, token, d]
            elif contributions:
                z = merged.view(batch, length, g.n_heads, g.d_head).transpose(1, 2)
                contribution = torch.matmul(z, weights.w_o_by_head_t)
            for position, head in enumerate(pattern_heads):
                if (layer, head) in wanted_patterns:
                    # A view: the buffer holds only kept heads (or is the all-pattern output).
                    kept_patterns[(layer, head)] = pattern[:, position]

            if vectors:
                key_stack.append(key)
                query_stack.append(query)
                value_stack.append(value)
            if contributions:
                contribution_stack.append(contribution)
                attention_output_stack.append(attention_output)

            if layer == last_layer or blocks is not None:
                continue  # a whole-block call has done the MLP already
            if kernel is not None:
                kernel.add_layer_norm(hidden, attention_output, *weights.ln_2, out=normed)
                torch.addmm(weights.b_fc, normed_rows, weights.w_fc_t, out=inner)
                torch.addmm(weights.b_proj, activation(inner), weights.w_proj_t, out=mlp_rows)
                pending = mlp
            else:
                hidden = hidden + attention_output
                normed = F.layer_norm(hidden, (g.d_model,), *weights.ln_2)
                inner = F.linear(normed, weights.w_fc, weights.b_fc)  # [batch, token, d_mlp]
                hidden = hidden + F.linear(activation(inner), weights.w_proj, weights.b_proj)

        def stack(tensors: list[Tensor]) -> Tensor | None:
            return torch.stack(tensors, dim=1) if tensors else None

        return EngineOutput(
            activity=activity.transpose(0, 1).contiguous(),
            patterns=kept_patterns,
            all_patterns=pattern_store.transpose(0, 1) if pattern_store is not None else None,
            keys=stack(key_stack),
            queries=stack(query_stack),
            values=stack(value_stack),
            contributions=stack(contribution_stack),
            attention_outputs=stack(attention_output_stack),
        )

    # -- the fused kernel (headscope.model.backends.native), when one is attached ----------

    kernel: AttentionKernel | None = None
    # Threads for _run_split, by count, made on first use (the count is torch's, rarely changed).
    _part_pools: dict[int, ThreadPoolExecutor]
    _blocks: list[BlockWeights] | None = None  # the kernel's whole-block weights, one per layer

    def use_kernel(self, kernel: AttentionKernel | None, *, whole_blocks: bool = True) -> None:
        """Run attention with the fused C kernel (None: the torch path below).

        The kernel covers heads of size 4 (every TinyStories model); other sizes keep torch.
        Whole blocks go in one call (`whole_blocks`) where the kernel offers it and the model's
        activation is the tanh-GELU (the kernel's own); otherwise its pieces are called one by
        one, with the same results bit for bit."""
        if kernel is not None and self.geometry.d_head != SUPPORTED_D_HEAD:
            log.info("d_head=%d: the attention kernel needs 4; using torch", self.geometry.d_head)
            kernel = None
        self.kernel = kernel
        self._blocks = None
        if (
            kernel is not None
            and whole_blocks
            and kernel.blocks
            and self._activation is _gelu_tanh_by_sigmoid
        ):
            self._blocks = [
                kernel.block_weights(
                    w.ln_1,
                    w.ln_2,
                    w.w_qkv,
                    w.w_o,
                    w.b_o,
                    w.w_fc,
                    w.b_fc,
                    w.w_proj,
                    w.b_proj,
                    w.w_o_gram,
                    self.geometry.n_heads,
                    self._window(layer),
                )  # fmt: skip
                for layer, w in enumerate(self._layers)
            ]

    @property
    def whole_blocks(self) -> bool:
        """Whether a single-threaded forward runs each block in one kernel call."""
        return self._blocks is not None

    def _window(self, layer: int) -> int:
        """Keys a query may see on this layer, counting itself (0: all earlier keys)."""
        local = self.geometry.attention_layers[layer] == "local"
        return self.geometry.window_size if local else 0

    def _attend(
        self,
        layer: int,
        query: Tensor,  # [batch, head, token, d_head]
        key: Tensor,
        value: Tensor,
        pattern_heads: list[int],
        out: Tensor | None = None,  # [batch, len(pattern_heads), q, k], to fill in
    ) -> tuple[Tensor | None, Tensor]:
        """Attention of every head: z = softmax(q·kᵀ + mask) · v, keeping the patterns of
        `pattern_heads` only. Returns ([batch, len(pattern_heads), q, k] or None, z).

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
        if out is None and pattern_heads:
            out = torch.empty(batch, len(pattern_heads), length, length)

        if length <= WHOLE_UP_TO:
            scores = (
                out.view(batch * heads, length, length)
                if every_head
                else torch.empty(batch * heads, length, length)
            )
            # The mask is added inside the GEMM (bias + q·kᵀ): one pass over the scores.
            torch.baddbmm(bias, queries, keys.transpose(1, 2), out=scores)
            torch.softmax(scores, dim=-1, out=scores)
            z = self._mix_values(scores, values)
            if pattern_heads and not every_head:
                out.copy_(scores.view(batch, heads, length, length)[:, pattern_heads])
            return out, z.view(batch, heads, length, d_head)

        # Long sequences, one block of query rows at a time over the keys that block can see:
        # a query never sees later keys (nor, on local layers, keys beyond the window), so those
        # parts of a pattern are zeros that need no scores, softmax or mixing.
        window = self._window(layer) or length
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
            z[:, row_start:row_end] = self._mix_values(scores, values[:, first_key:row_end])
            if pattern_heads:
                kept = scores.view(batch, heads, row_end - row_start, row_end - first_key)
                if not every_head:
                    kept = kept[:, pattern_heads]
                rows = out[:, :, row_start:row_end]
                rows[..., :first_key] = 0.0
                rows[..., first_key:row_end] = kept
                rows[..., row_end:] = 0.0
        return out, z.view(batch, heads, length, d_head)

    @staticmethod
    def _mix_values(pattern: Tensor, value: Tensor) -> Tensor:
        """z = pattern · values, [..., q, k] x [..., k, d_head] -> [..., q, d_head].

        Computed as (vᵀ · patternᵀ)ᵀ: with d_head = 4 the GEMM runs far faster with the long
        dimension as the output's columns than as its reduction.
        """
        return torch.matmul(value.transpose(-1, -2), pattern.transpose(-1, -2)).transpose(-1, -2)

    # -- the plain path (the reference) ----------------------------------------------------------

    def _run_plain(
        self,
        input_ids: Tensor,
        *,
        last_layer: int,
        wanted_patterns: set[tuple[int, int]],
        all_patterns: bool,
        vectors: bool,
        contributions: bool,
    ) -> EngineOutput:
        g = self.geometry
        batch, length = input_ids.shape
        eps = self.config.layer_norm_epsilon

        positions = torch.arange(length).unsqueeze(0)
        hidden = F.embedding(input_ids, self.tensors["wte.weight"]) + F.embedding(
            positions, self.tensors["wpe.weight"]
        )  # [batch, token, d_model]

        def split_heads(projected: Tensor) -> Tensor:
            return projected.view(batch, length, g.n_heads, g.d_head).transpose(1, 2)

        activity, pattern_stack, key_stack, query_stack, value_stack = [], [], [], [], []
        contribution_stack, attention_output_stack = [], []
        kept_patterns: dict[tuple[int, int], Tensor] = {}
        for layer in range(last_layer + 1):

            def weight(name: str, layer: int = layer) -> Tensor:
                return self._block_tensor(layer, name)

            normed = F.layer_norm(
                hidden, (g.d_model,), weight("ln_1.weight"), weight("ln_1.bias"), eps
            )
            # Separate q, k and v projections, as the checkpoint stores them (not the fused QKV).
            query = split_heads(F.linear(normed, weight("attn.attention.q_proj.weight")))
            key = split_heads(F.linear(normed, weight("attn.attention.k_proj.weight")))
            value = split_heads(F.linear(normed, weight("attn.attention.v_proj.weight")))
            # query, key, value: [batch, head, token, d_head]

            # GPT-Neo does not divide scores by sqrt(d_head): the model was trained without it.
            scores = torch.matmul(query.float(), key.float().transpose(-1, -2))  # [b, h, q, k]
            mask = self.causal_mask(layer, length)
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            pattern = torch.softmax(scores, dim=-1).to(value.dtype)  # [batch, head, q, k]
            z = torch.matmul(pattern, value)  # [batch, head, token, d_head]

            contribution = torch.einsum("bhtd,hmd->bhtm", z, self._w_o_by_head[layer])
            activity.append(contribution.norm(dim=-1))  # [batch, head, token]
            attention_output = contribution.sum(dim=1) + weight("attn.attention.out_proj.bias")

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
            normed = F.layer_norm(
                hidden, (g.d_model,), weight("ln_2.weight"), weight("ln_2.bias"), eps
            )
            inner = F.linear(normed, weight("mlp.c_fc.weight"), weight("mlp.c_fc.bias"))
            hidden = hidden + F.linear(
                self._reference_activation(inner),
                weight("mlp.c_proj.weight"),
                weight("mlp.c_proj.bias"),
            )

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
