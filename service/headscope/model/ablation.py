"""Ablation: a forward pass to the logits with chosen heads' z replaced before W_O, and every
single-head ablation of one text in one batched pass.

Replacing a head's z (its input to W_O) by zeros removes its contribution c_h = z_h · W_hᵀ;
by its mean over a corpus it keeps the head's average effect and removes what it says about
this text. The replacement is the engine's `Ablation` (applied by the Python backends; the C
kernel computes z inside its attention call and declines).

Many single-head ablations of one text share their prefix: every layer before the ablated one
computes the same residual stream as the clean pass. `single_head_ablations` runs one batch
whose row 0 is the clean text; at each layer the variants ablating a head of that layer join
the batch as copies of row 0's residual stream, and every row runs the layer with its own head
replaced. A variant ablating layer L thus costs layers L..last, and every layer is one batched
block call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from headscope.model.backends.base import Ablation, ForwardRequest
from headscope.model.engine import AnalysisEngine
from headscope.model.stopping import AnalysisStopped, stop_signal

# (row, position) pairs whose logits are computed at once: the [pairs, vocab] logits of a chunk
# are the largest buffer of the ablation statistics (the chunk size is measured in
# bench/README.md).
LOGIT_CHUNK = 128


def ablation_values(engine: AnalysisEngine, mean_z: Tensor | None) -> Tensor:
    """[layer, head, d_head]: what an ablated head's z becomes (zeros, or `mean_z`)."""
    g = engine.geometry
    if mean_z is None:
        return torch.zeros(g.n_layers, g.n_heads, g.d_head)
    return mean_z.to(torch.float32)


def head_mask(engine: AnalysisEngine, heads: Sequence[tuple[int, int]]) -> Tensor:
    """[1, layer, head] bool: True for each (layer, head) in `heads`."""
    g = engine.geometry
    mask = torch.zeros(1, g.n_layers, g.n_heads, dtype=torch.bool)
    for layer, head in heads:
        mask[0, layer, head] = True
    return mask


def single_head_ablations(
    engine: AnalysisEngine,
    input_ids: Tensor,  # [1, token]
    heads: Sequence[tuple[int, int]],
    values: Tensor,  # [layer, head, d_head]
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """(clean, ablated): ln_f of the final residual stream for the text, [token, d_model], and
    for the text with each head of `heads` ablated alone, [len(heads), token, d_model] in the
    order of `heads`. The clean prefix is computed once (see the module's docstring)."""
    g = engine.geometry
    n_layers, n_heads = g.n_layers, g.n_heads
    last = n_layers - 1
    no_heads = torch.zeros(1, n_layers, n_heads, dtype=torch.bool)
    chosen = engine.backend_for(
        ForwardRequest(last_layer=last, final=True, ablation=Ablation(no_heads, values)), backend
    )
    joining: dict[int, list[int]] = {}  # layer -> indices into `heads` ablated on it
    for index, (layer, _head) in enumerate(heads):
        joining.setdefault(layer, []).append(index)
    stop = stop_signal()
    with torch.inference_mode():
        length = input_ids.shape[1]
        running = engine.embed(input_ids)  # [row, token, d_model]; row 0: the clean text
        masks = no_heads  # [row, layer, head]
        order: list[int] = []  # index into `heads` of rows 1..
        for layer in range(n_layers):
            if stop is not None and stop.is_set():
                raise AnalysisStopped(f"stopped before L{layer}: nobody waits for the answer")
            new = joining.get(layer, [])
            if new:
                running = torch.cat([running, running[:1].expand(len(new), -1, -1)])
                new_masks = torch.zeros(len(new), n_layers, n_heads, dtype=torch.bool)
                for row, index in enumerate(new):
                    new_masks[row, layer, heads[index][1]] = True
                masks = torch.cat([masks, new_masks])
                order.extend(new)
            request = ForwardRequest(last_layer=last, final=True, ablation=Ablation(masks, values))
            layer_pass = chosen.start(running, request, one_thread=False)
            activity = torch.empty(len(running), n_heads, length)  # [row, head, token], unused
            layer_pass.block(layer, activity, None, [], last=False)
            running = layer_pass.residual()
        final = engine.final_norm(running)  # [row, token, d_model]
        ablated = torch.empty(len(heads), length, g.d_model)
        if order:
            ablated[torch.tensor(order)] = final[1:]
        return final[0], ablated


@dataclass
class NextTokenStats:
    """Per row and position t: how well the model predicts token t + 1 (the actual next one)."""

    loss: Tensor  # [row, position]: -log p(next token)
    logit: Tensor  # [row, position]: the next token's logit
    prob: Tensor  # [row, position]: its probability
    top_ids: Tensor  # [row, position, k]: the k most probable tokens, best first
    top_probs: Tensor  # [row, position, k]


def next_token_stats(
    engine: AnalysisEngine,
    final: Tensor,  # [row, token, d_model]: ln_f of the final residual stream
    next_ids: Tensor,  # [position]: the token after each position (positions 0..token - 2)
    *,
    positions: Tensor | None = None,  # [position]: which positions (default 0..len(next_ids)-1)
    top_k: int = 0,
) -> NextTokenStats:
    """Loss, logit and probability of the actual next token, and the top-k, computed in chunks
    of (row, position) pairs so no [row, token, vocab] tensor is ever built."""
    if positions is None:
        positions = torch.arange(len(next_ids))
    rows = final.shape[0]
    with torch.inference_mode():
        picked = final[:, positions].reshape(-1, final.shape[-1])  # [row * position, d_model]
        targets = next_ids[positions].repeat(rows)  # [row * position]
        count = len(picked)
        loss, logit = torch.empty(count), torch.empty(count)
        top_ids = torch.empty(count, top_k, dtype=torch.long)
        top_probs = torch.empty(count, top_k)
        for start in range(0, count, LOGIT_CHUNK):
            end = min(count, start + LOGIT_CHUNK)
            logits = engine.logits(picked[start:end])  # [chunk, vocab]
            # log p(t) = logit(t) - logsumexp(logits): no [chunk, vocab] log-probabilities.
            normaliser = torch.logsumexp(logits, dim=-1)  # [chunk]
            logit[start:end] = logits.gather(1, targets[start:end, None])[:, 0]
            loss[start:end] = normaliser - logit[start:end]
            if top_k:
                best = logits.topk(top_k, dim=-1)
                top_ids[start:end] = best.indices
                top_probs[start:end] = (best.values - normaliser[:, None]).exp()
        shape = (rows, len(positions))
        return NextTokenStats(
            loss=loss.view(shape),
            logit=logit.view(shape),
            prob=(-loss).exp().view(shape),
            top_ids=top_ids.view(*shape, top_k),
            top_probs=top_probs.view(*shape, top_k),
        )
