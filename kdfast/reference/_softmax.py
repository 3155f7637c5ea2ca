"""The softmax used by every reference loss, with kdfast's rules at the edges.

* ``-inf`` entries get probability 0 (a row of only ``-inf`` is handled by the callers: it
  counts as masked);
* a row holding ``+inf`` puts its mass uniformly on its ``+inf`` entries (the limit of the
  softmax); such a softmax is locally constant, so no gradient flows through it;
* NaN anywhere in a row makes the whole row NaN (NaN in gives NaN out);
* the row maximum is subtracted BEFORE dividing by the temperature, so logits near the top
  of the float range (|x| ~ 3e38) with T < 1 do not overflow where the answer is finite.
"""
from __future__ import annotations

import torch


def limit_logits(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every row that holds ``+inf`` replaced by constants: 0 on its ``+inf``
    entries, ``-inf`` elsewhere, NaN kept (as a constant)."""
    pos = x == float("inf")
    has_pos = pos.any(-1, keepdim=True)
    lim = torch.where(pos, torch.zeros_like(x), torch.full_like(x, float("-inf")))
    lim = torch.where(torch.isnan(x), torch.full_like(x, float("nan")), lim)
    return torch.where(has_pos, lim, x)


def scaled_logits(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(x - rowmax) / temperature`` with the rules above: softmax of it is softmax(x / T)."""
    if x.shape[-1] == 0:  # nothing to normalise (L = 0): an empty result
        return x / temperature
    x = limit_logits(x)
    m = x.detach().amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # NaN / all -inf rows: no shift
    return (x - m) / temperature


def log_softmax_t(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log_softmax(x / temperature)`` over the last dim, with the rules above."""
    x = scaled_logits(x, temperature)
    return x if x.shape[-1] == 0 else torch.log_softmax(x, dim=-1)
