"""What "activity" means, written once: the norm of a head's contribution to the residual stream.

A head's contribution is c_h = z_h · W_O[:, h-slice]ᵀ, its share of the attention block's
output before out_proj's bias (the bias belongs to no head), and its activity is ‖c_h‖₂ at
every token. The reference and torch backends call `ACTIVITY` below; the C kernel computes the
same norm its own way (a quadratic form of z) and is checked against `contribution_norm` when it
loads. The engine sends any other formula to a Python backend, so a variant (with b_O, normalised
by the residual, ...) is one new function here and one changed name in `ACTIVITY`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# (z [..., head, token, d_head], W_O by head [head, d_head, d_model], out) -> [..., head, token]
ActivityFormula = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def head_contributions(z: Tensor, w_o_by_head_t: Tensor) -> Tensor:
    """c_h = z_h · W_O[:, h-slice]ᵀ: [..., head, token, d_head] -> [..., head, token, d_model].

    `w_o_by_head_t[h]` is W_O[:, h-slice]ᵀ, [d_head, d_model]; summed over heads (plus out_proj's
    bias) the contributions are the attention block's output."""
    return torch.matmul(z, w_o_by_head_t)


def contribution_norm(z: Tensor, w_o_by_head_t: Tensor, out: Tensor | None = None) -> Tensor:
    """‖c_h‖₂ per head and token: [..., head, token] (written into `out` when given)."""
    return torch.linalg.vector_norm(head_contributions(z, w_o_by_head_t), dim=-1, out=out)


# The engine's definition of activity; the native backend computes only this one.
ACTIVITY: ActivityFormula = contribution_norm
