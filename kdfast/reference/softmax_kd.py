"""Reference for the fused softmax-distillation loss family (``torch.ops.kdfast.kd_loss``).

Row i of ``student``/``teacher`` ([N, V]) gives
``soft_weight[i] * soft_i + hard_weight[i] * hard_i`` where, at temperature T,

* kind 0 (KL):      soft = KL(softmax(t/T) || softmax(s/T))
* kind 1 (soft CE): soft = -sum(softmax(t/T) * log_softmax(s/T))
* kind 2 (MSE):     soft = sum((s - t)^2), equal entries (also both +-inf) counting 0
* hard = -log_softmax(s)[label]   (temperature 1; only where hard_weight is given)

Edges (every backend gives exactly these, see kdfast.reference._softmax for the softmax):

* a term whose weight is 0 is skipped (so a masked row, or the soft term at alpha = 1, never
  turns into NaN through ``0 * inf``); a row with both weights 0 is masked: loss 0, gradient
  0, whatever its values (NaN included);
* entries whose teacher probability is 0 contribute 0, so ``-inf`` in both is finite; a
  class the teacher allows but the student rules out (``-inf`` only there) gives ``+inf``;
* a row whose student logits are all ``-inf``, or (for the softmax kinds, when the soft term
  counts) whose teacher logits are all ``-inf``, counts as masked: loss 0, gradient 0;
* ``+inf`` logits: the softmax puts its mass uniformly on them (its limit); a student row
  holding ``+inf`` has zero gradient through its softmax;
* NaN anywhere in a counted row gives NaN loss (and NaN gradient wherever it reaches).

Computed in float32 (float64 for float64 inputs), differentiable w.r.t. both inputs.
"""
from __future__ import annotations

import torch

from kdfast.reference._softmax import log_softmax_t, scaled_logits
from kdfast.reference.kinds import KD_KL as KL, KD_MSE as MSE, KD_SOFT_CE as SOFT_CE  # noqa: F401


def kd_loss_rows(student, teacher, labels, soft_weight, hard_weight, kind: int,
                 temperature: float) -> torch.Tensor:
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    s, t = student.to(acc), teacher.to(acc)
    ws = soft_weight.to(acc)
    wh = hard_weight.to(acc) if hard_weight is not None else torch.zeros_like(ws)
    use_soft, use_hard = ws != 0, wh != 0
    neg_inf = float("-inf")
    s_dead = (s == neg_inf).all(dim=-1)
    t_dead = (t == neg_inf).all(dim=-1) & use_soft if kind != MSE else torch.zeros_like(s_dead)
    dead = s_dead | t_dead | ~(use_soft | use_hard)
    # Each term sees zeros in the rows where it does not count (masked rows, the soft term of
    # rows with ws == 0, the hard term of rows with wh == 0), so no NaN or inf there can leak
    # into the loss or, through a zero incoming gradient, into the gradient.
    off_soft = (dead | ~use_soft).unsqueeze(-1)
    s_hard = torch.where((dead | ~use_hard).unsqueeze(-1), torch.zeros_like(s), s)
    s = torch.where(off_soft, torch.zeros_like(s), s)
    t = torch.where(off_soft, torch.zeros_like(t), t)
    if kind == MSE:
        diff = torch.where(s == t, torch.zeros_like(s), s - t)
        soft = (diff * diff).sum(-1)
    else:
        z = scaled_logits(s, temperature)
        log_p = log_softmax_t(t, temperature)
        p = log_p.exp()
        # where p == 0 a term is 0; the where keeps its gradient finite too (NaN p stays NaN)
        zero = torch.zeros_like(p)
        # -sum(p log_softmax(z)) written as logsumexp(z) - sum(p z) (sum p = 1): its student
        # gradient is softmax(z) - p, exactly 0 where the rows agree, however small T is
        # (through log_softmax it is softmax(z) * sum(p) - p, whose rounding 1/T magnifies)
        cross = torch.logsumexp(z, -1) - torch.where(p == 0, zero, p * z).sum(-1)
        if s.shape[-1] == 0:
            cross = z.sum(-1)
        soft = cross + torch.where(p == 0, zero, p * log_p).sum(-1) if kind == KL else cross
    zero_row = torch.zeros_like(ws)
    loss = torch.where(use_soft, ws * soft, zero_row)
    if hard_weight is not None:
        log_q1 = log_softmax_t(s_hard, 1.0)
        hard = -log_q1.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
        loss = loss + torch.where(use_hard, wh * hard, zero_row)
    return torch.where(dead, zero_row, loss)
