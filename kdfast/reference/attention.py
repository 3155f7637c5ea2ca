"""Reference for the fused attention-map loss family (``torch.ops.kdfast.attention_loss``).

Inputs are per-layer attention maps ``student[l]``, ``teacher[l]`` of shape [B, H, L, L]
(row = query, column = key), an optional key/query weight ``mask`` [B, L] (1 = real token,
0 = padding, in the accumulation dtype) and a scalar ``scale`` (a 1-element tensor, so that
the Python layer can fold a data-dependent normaliser in without a host sync). Layer l gives

* kind 0 (TinyBERT MSE): entries <= -100 (masked keys under an additive mask) are set to 0
  in student and teacher, then ``scale * sum(w * (s - t)^2)``;
* kind 1 (MSE):          ``scale * sum(w * (s - t)^2)``;
* kind 2 (KL):           ``scale * sum_rows mask[b, q] * KL(softmax(t/T) || softmax(s/T))``
  per head and query row, the softmax taken over real keys only (mask[b, k] != 0);

with ``w[b, q, k] = mask[b, q] * mask[b, k]`` (1 without a mask). Equal entries (also both
-inf) count 0 in the MSE kinds; in KL, keys whose teacher probability is 0 count 0 and a row
with no real key counts 0. Computed in float32 (float64 for float64 inputs), differentiable
w.r.t. both inputs. Returns the per-layer losses [n_layers].
"""
from __future__ import annotations

import torch

TINYBERT_MSE, MSE, KL = 0, 1, 2


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
            sq = d * d
            if m is not None:
                sq = sq * (m[:, None, :, None] * m[:, None, None, :])
            losses.append(sc * sq.sum())
            continue
        # KL over real keys; padded keys are -inf, so they get probability 0 on both sides.
        keys = (m != 0)[:, None, None, :] if m is not None else torch.ones_like(s, dtype=torch.bool)
        neg_inf = torch.tensor(float("-inf"), dtype=acc, device=s.device)
        a = torch.where(keys, s / temperature, neg_inf)
        b = torch.where(keys, t / temperature, neg_inf)
        dead = (a == neg_inf).all(-1, keepdim=True) | (b == neg_inf).all(-1, keepdim=True)
        a = torch.where(dead, torch.zeros_like(a), a)  # no NaN leaks from an all-masked row
        b = torch.where(dead, torch.zeros_like(b), b)
        log_q = torch.log_softmax(a, -1)
        log_p = torch.log_softmax(b, -1)
        p = log_p.exp()
        inner = torch.where(p > 0, log_p - log_q, torch.zeros_like(p))
        rows = (p * inner).sum(-1)  # [B, H, L]
        rows = torch.where(dead.squeeze(-1), torch.zeros_like(rows), rows)
        if m is not None:
            rows = rows * m[:, None, :]
        losses.append(sc * rows.sum())
    return torch.stack(losses)


def value_relation_kl(student_values, teacher_values, mask, num_relation_heads: int):
    """MiniLM value relation: per relation head a, ``R = softmax(V_a V_a^T / sqrt(d_a))`` over
    real keys; ``mean over (b, a, real q) of KL(R_T[q] || R_S[q])``.

    ``*_values`` are [B, L, D] (D = a multiple of ``num_relation_heads``; student and teacher
    D may differ), ``mask`` bool [B, L] or None. Returns a scalar (float32, float64 for float64).
    """
    acc = torch.float64 if student_values.dtype == torch.float64 else torch.float32
    bsz, length = student_values.shape[:2]
    a = num_relation_heads

    def relation(v):
        v = v.to(acc)
        d = v.shape[-1] // a
        v = v.reshape(bsz, length, a, d).transpose(1, 2)  # [B, A, L, d]
        return v @ v.transpose(-1, -2) / d ** 0.5

    if mask is None:
        mask = torch.ones(bsz, length, dtype=torch.bool, device=student_values.device)
    m = mask.to(acc)
    scale = 1.0 / (a * m.sum()).clamp_min(1)
    return attention_loss_layers([relation(student_values)], [relation(teacher_values)],
                                 m, scale, KL, 1.0)[0]
