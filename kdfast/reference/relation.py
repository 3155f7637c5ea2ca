"""Reference for the projection-level relation losses (``kdfast::relation_loss``): the
materialised formula, which defines what the map-free kernels compute.

Inputs are the student pair ``[A_s, B_s]`` and the teacher pair ``[A_t, B_t]``, each
[B, R, L, d] (R relation heads; d_s and d_t may differ, R and L may not), an optional
[B, L] 0/1 ``mask`` in the accumulation dtype (1 = real token), a 1-element ``scale`` and a
``kind`` (kdfast.reference.kinds.ATTN_*). With ``S = A B^T / sqrt(d)`` per head:

* ATTN_KL:           ``scale * sum over (b, r, real q) of KL(softmax(S_t[q]) || softmax(S_s[q]))``,
  the softmax over real keys (the MiniLM attention / MiniLMv2 relation transfer);
* ATTN_MSE:          ``scale * sum over real q x real k of (S_s - S_t)^2`` (``masked`` mode);
* ATTN_TINYBERT_MSE: TinyBERT's official loss on ``S + additive mask`` in closed form: every
  entry <= -100 is set to 0 on both sides, masked keys (whose BERT score is S - 10000 or
  S + finfo.min) count 0, padded query rows count, ``scale * sum over (b, r, q, real k)``.

Positions the mask marks as padding never contribute, whatever their projections hold (NaN
included), except padded query rows in ATTN_TINYBERT_MSE, which the official code counts.
Computed in float32 (float64 for float64 inputs); returns the loss as a [1] tensor.
"""
from __future__ import annotations

import torch

from kdfast.reference.attention import attention_loss_layers
from kdfast.reference.kinds import ATTN_KL, ATTN_MSE, ATTN_TINYBERT_MSE


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def relation_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a b^T / sqrt(d)`` in the accumulation dtype: [B, R, L, d] x2 -> [B, R, L, L]."""
    acc = _acc(a.dtype)
    a, b = a.to(acc), b.to(acc)
    return a @ b.transpose(-1, -2) / a.shape[-1] ** 0.5


def relation_loss(student, teacher, mask, scale, kind: int) -> torch.Tensor:
    """The loss [1] (see the module docstring)."""
    pairs = []
    for a, b in (student, teacher):
        if mask is not None:  # padded positions never contribute (no NaN leaks via 0 * NaN)
            keep = (mask != 0)[:, None, :, None]
            b = torch.where(keep, b, torch.zeros_like(b))
            if kind != ATTN_TINYBERT_MSE:  # TinyBERT counts padded query rows
                a = torch.where(keep, a, torch.zeros_like(a))
        pairs.append(relation_scores(a, b))
    s, t = pairs
    acc = s.dtype
    if kind in (ATTN_KL, ATTN_MSE):
        return attention_loss_layers([s], [t], mask, scale, kind, 1.0).reshape(1)
    if kind != ATTN_TINYBERT_MSE:
        raise ValueError(f"unknown relation kind {kind}")
    s = torch.where(s <= -100, torch.zeros_like(s), s)
    t = torch.where(t <= -100, torch.zeros_like(t), t)
    d = torch.where(s == t, torch.zeros_like(s), s - t)
    if mask is not None:
        keys = (mask != 0)[:, None, None, :]
        d = torch.where(keys, d, torch.zeros_like(d))
    return (scale.to(acc).reshape(()) * (d * d).sum()).reshape(1)
