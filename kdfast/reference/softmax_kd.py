"""Reference for the fused softmax-distillation loss family (``torch.ops.kdfast.kd_loss``).

Row i of ``student``/``teacher`` ([N, V]) gives
``soft_weight[i] * soft_i + hard_weight[i] * hard_i`` where, at temperature T,

* kind 0 (KL):      soft = KL(softmax(t/T) || softmax(s/T))
* kind 1 (soft CE): soft = -sum(softmax(t/T) * log_softmax(s/T))
* kind 2 (MSE):     soft = sum((s - t)^2), equal entries (also both -inf) counting 0
* hard = -log_softmax(s)[label]   (temperature 1; only where hard_weight is given)

Entries whose teacher probability is 0 contribute 0 (so -inf in both is finite), and a row
whose student or teacher logits are all -inf counts as masked: loss 0, gradient 0.
Computed in float32 (float64 for float64 inputs), differentiable w.r.t. both inputs.
"""
from __future__ import annotations

import torch

KL, SOFT_CE, MSE = 0, 1, 2


def kd_loss_rows(student, teacher, labels, soft_weight, hard_weight, kind: int,
                 temperature: float) -> torch.Tensor:
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    s, t = student.to(acc), teacher.to(acc)
    ws = soft_weight.to(acc)
    neg_inf = torch.tensor(float("-inf"), dtype=acc, device=s.device)
    s_dead = (s == neg_inf).all(dim=-1)
    t_dead = (t == neg_inf).all(dim=-1)
    # Masked rows are replaced by zeros so that no NaN can leak into the gradient.
    dead = s_dead | (t_dead if kind != MSE else torch.zeros_like(t_dead))
    alive = (~dead).unsqueeze(-1)
    s = torch.where(alive, s, torch.zeros_like(s))
    t = torch.where(alive, t, torch.zeros_like(t))

    if kind == MSE:
        diff = torch.where(s == t, torch.zeros_like(s), s - t)
        soft = (diff * diff).sum(-1)
    else:
        log_q = torch.log_softmax(s / temperature, dim=-1)
        log_p = torch.log_softmax(t / temperature, dim=-1)
        p = log_p.exp()
        if kind == KL:
            # where p == 0 the term is 0; the inner where keeps its gradient finite too
            inner = torch.where(p > 0, log_p - log_q, torch.zeros_like(p))
        else:
            inner = torch.where(p > 0, -log_q, torch.zeros_like(p))
        soft = (p * inner).sum(-1)
    loss = ws * soft
    if hard_weight is not None:
        log_q1 = torch.log_softmax(s, dim=-1)
        hard = -log_q1.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
        loss = loss + hard_weight.to(acc) * hard
    zero = torch.zeros_like(loss)
    weights = ws if hard_weight is None else ws.abs() + hard_weight.to(acc).abs()
    return torch.where(dead | (weights == 0), zero, loss)
