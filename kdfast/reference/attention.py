"""Reference for the fused attention-map loss family (``torch.ops.kdfast.attention_loss``).

Inputs are per-layer attention maps ``student[l]``, ``teacher[l]`` of shape [B, H, L, L]
(row = query, column = key), an optional key/query weight ``mask`` [B, L] (1 = real token,
0 = padding, in the accumulation dtype) and a scalar ``scale`` (a 1-element tensor, so that
the Python layer can fold a data-dependent normaliser in without a host sync). Layer l gives

* kind 0 (TinyBERT MSE): entries <= -100 (masked keys under an additive mask) are set to 0
  in student and teacher (with zero gradient), then ``scale * sum(w * (s - t)^2)``;
* kind 1 (MSE):          ``scale * sum(w * (s - t)^2)``;
* kind 2 (KL):           ``scale * sum_rows mask[b, q] * KL(softmax(t/T) || softmax(s/T))``
  per head and query row, the softmax taken over real keys only (mask[b, k] != 0);

with ``w[b, q, k] = mask[b, q] * mask[b, k]`` (1 without a mask). Edges: an entry or row with
weight 0 is masked whatever its value (NaN and inf included): it counts 0 with gradient 0.
Equal entries (also both +-inf) count 0 in the MSE kinds; NaN counts NaN (NaN <= -100 is
false, so TinyBERT mode keeps it). In KL, keys whose teacher probability is 0 count 0, a row
with no real key or whose real student or teacher entries are all -inf counts 0, ``+inf``
entries take the row's mass uniformly (see kdfast.reference._softmax) and NaN in a counted
row gives NaN. Computed in float32 (float64 for float64 inputs), differentiable w.r.t. both
inputs. Returns the per-layer losses [n_layers].
"""
from __future__ import annotations

import torch

from kdfast.reference._softmax import log_softmax_t
from kdfast.reference.kinds import ATTN_KL as KL, ATTN_MSE as MSE, ATTN_TINYBERT_MSE as TINYBERT_MSE  # noqa: F401


def attention_loss_layers(student, teacher, mask, scale, kind: int, temperature: float = 1.0):
    losses = []
    for s_l, t_l in zip(student, teacher):
        acc = torch.float64 if s_l.dtype == torch.float64 else torch.float32
        s, t = s_l.to(acc), t_l.to(acc)
        sc = scale.to(acc).reshape(())
        m = None if mask is None else mask.to(acc)
        if kind in (TINYBERT_MSE, MSE):
            if kind == TINYBERT_MSE:
                s = torch.where(s <= -100, torch.zeros_like(s), s)
                t = torch.where(t <= -100, torch.zeros_like(t), t)
            d = torch.where(s == t, torch.zeros_like(s), s - t)
            if m is not None:
                w = m[:, None, :, None] * m[:, None, None, :]
                d = torch.where(w != 0, d, torch.zeros_like(d))  # masked entries count 0
                sq = (w * d) * d
            else:
                sq = d * d
            losses.append(sc * sq.sum())
            continue
        # KL over real keys; padded keys are -inf, so they get probability 0 on both sides.
        neg_inf = torch.tensor(float("-inf"), dtype=acc, device=s.device)
        if m is not None:
            keys = (m != 0)[:, None, None, :]
            a = torch.where(keys, s, neg_inf)
            b = torch.where(keys, t, neg_inf)
            row_off = (m == 0)[:, None, :, None]
        else:
            a, b = s, t
            row_off = torch.zeros(s.shape[:-1] + (1,), dtype=torch.bool, device=s.device)
        dead = (a == neg_inf).all(-1, keepdim=True) | (b == neg_inf).all(-1, keepdim=True) | row_off
        a = torch.where(dead, torch.zeros_like(a), a)  # no NaN leaks from a masked row
        b = torch.where(dead, torch.zeros_like(b), b)
        log_q = log_softmax_t(a, temperature)
        log_p = log_softmax_t(b, temperature)
        p = log_p.exp()
        inner = torch.where(p == 0, torch.zeros_like(p), log_p - log_q)
        rows = (p * inner).sum(-1)  # [B, H, L]
        if m is not None:
            rows = rows * m[:, None, :]
        rows = torch.where(dead.squeeze(-1), torch.zeros_like(rows), rows)
        losses.append(sc * rows.sum())
    return torch.stack(losses)


def value_relation_loss(student_values, teacher_values, mask, scale, num_relation_heads: int):
    """The value-relation KL with an explicit normaliser: the definition of
    ``torch.ops.kdfast.value_relation(vs, vt, mask, scale, heads)``.

    Per relation head a, ``R = softmax(V_a V_a^T / sqrt(d_a))`` over real keys (mask[b, k] != 0);
    ``scale * sum over (b, a, real q) of mask[b, q] * KL(R_T[q] || R_S[q])``. ``mask`` is [B, L]
    0/1 in the accumulation dtype or None, ``scale`` a 1-element tensor. Values at padded
    positions are masked whatever they hold (NaN included). Returns a scalar.
    """
    acc = torch.float64 if student_values.dtype == torch.float64 else torch.float32
    bsz, length = student_values.shape[:2]
    a = num_relation_heads

    def relation(v):
        v = v.to(acc)
        if mask is not None:
            v = torch.where((mask != 0)[:, :, None], v, torch.zeros_like(v))
        d = v.shape[-1] // a
        v = v.reshape(bsz, length, a, d).transpose(1, 2)  # [B, A, L, d]
        return v @ v.transpose(-1, -2) / d ** 0.5

    return attention_loss_layers([relation(student_values)], [relation(teacher_values)],
                                 mask, scale, KL, 1.0)[0]


def value_relation_kl(student_values, teacher_values, mask, num_relation_heads: int):
    """MiniLM value relation: per relation head a, ``R = softmax(V_a V_a^T / sqrt(d_a))`` over
    real keys; ``mean over (b, a, real q) of KL(R_T[q] || R_S[q])``.

    ``*_values`` are [B, L, D] (D = a multiple of ``num_relation_heads``; student and teacher
    D may differ), ``mask`` bool [B, L] or None. Returns a scalar (float32, float64 for float64).
    """
    acc = torch.float64 if student_values.dtype == torch.float64 else torch.float32
    bsz, length = student_values.shape[:2]
    if mask is None:
        m = None
        scale = torch.full((1,), 1.0 / max(1, bsz * length * num_relation_heads), dtype=acc,
                           device=student_values.device)
    else:
        m = mask.to(acc)
        scale = (1.0 / (num_relation_heads * m.sum()).clamp_min(1)).reshape(1)
    return value_relation_loss(student_values, teacher_values, m, scale, num_relation_heads)
