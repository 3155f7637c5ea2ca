"""Triton kernel for the fused softmax-distillation loss family (see kdfast.reference.softmax_kd).

One program per row, the row streamed in blocks. Pass 1 finds the student and teacher
maxima (NaN ignored) and counts the -inf entries (a row of only -inf is masked; NaN is not
-inf). Pass 2 sums the exponentials with the final maxima, shifted BEFORE scaling by 1/T
(logits near the float limit do not overflow), which gives the loss exactly as the CPU
kernel (csrc/include/kdfast/softmax_kd_row.h) computes it. Pass 3, only when a gradient is
wanted, writes the gradient. Edges (+inf, NaN, masked terms) as in the reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_ACC = {torch.float64: tl.float64}


@triton.jit
def _shift(x, m):
    """x - m, with +inf - +inf taken as 0 (the +inf entries of a row whose maximum is +inf)."""
    return tl.where(x == m, 0.0, x - m)


@triton.jit
def _kd_loss_kernel(s_ptr, t_ptr, g_ptr, labels_ptr, ws_ptr, wh_ptr, loss_ptr, V, inv_t,
                    KIND: tl.constexpr, HAS_HARD: tl.constexpr, SEPARATE_HARD: tl.constexpr,
                    COMPUTE_GRAD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * V
    t_row = t_ptr + row * V
    ws = tl.load(ws_ptr + row).to(ACC)
    wh = tl.load(wh_ptr + row).to(ACC) if HAS_HARD else tl.zeros((), ACC)
    label = tl.load(labels_ptr + row) if HAS_HARD else 0
    use_soft = ws != 0
    use_hard = wh != 0
    neg_inf = float("-inf")
    offs = tl.arange(0, BLOCK)

    # pass 1: maxima (NaN ignored) and the number of -inf entries of each row
    ms = tl.full((), neg_inf, ACC)
    mt = tl.full((), neg_inf, ACC)
    s_ninf = tl.zeros((), tl.int64)
    t_ninf = tl.zeros((), tl.int64)
    for start in range(0, V, BLOCK):
        cols = start + offs
        inside = cols < V
        s = tl.load(s_row + cols, mask=inside, other=neg_inf).to(ACC)
        t = tl.load(t_row + cols, mask=inside, other=neg_inf).to(ACC)
        ms = tl.maximum(ms, tl.max(tl.where(s == s, s, neg_inf), 0))
        mt = tl.maximum(mt, tl.max(tl.where(t == t, t, neg_inf), 0))
        s_ninf += tl.sum(tl.where(inside & (s == neg_inf), 1, 0).to(tl.int64), 0)
        t_ninf += tl.sum(tl.where(inside & (t == neg_inf), 1, 0).to(tl.int64), 0)
    skip = (s_ninf == V) | ((ws == 0) & (wh == 0))
    if KIND != 2:  # softmax kinds: an all -inf teacher row is masked where the soft term counts
        skip = skip | (use_soft & (t_ninf == V))
    s_inf = ms == float("inf")  # the student softmax is constant there: no gradient through it

    # pass 2: sums with the final maxima
    zs = tl.zeros((), ACC)
    zt = tl.zeros((), ACC)
    dot = tl.zeros((), ACC)
    z1 = tl.zeros((), ACC)
    sq = tl.zeros((), ACC)
    for start in range(0, V, BLOCK):
        cols = start + offs
        inside = cols < V
        s = tl.load(s_row + cols, mask=inside, other=0.0).to(ACC)
        t = tl.load(t_row + cols, mask=inside, other=0.0).to(ACC)
        if KIND == 2:
            d = tl.where(inside & (s != t), s - t, 0.0)
            sq += tl.sum(d * d, 0)
        else:
            a = _shift(s, ms) * inv_t
            b = _shift(t, mt) * inv_t
            ea = tl.where(inside, tl.exp(a), 0.0)
            eb = tl.where(inside, tl.exp(b), 0.0)
            zs += tl.sum(ea, 0)
            zt += tl.sum(eb, 0)
            if KIND == 0:
                term = eb * (b - a)
            else:
                term = -eb * a
            dot += tl.sum(tl.where(eb > 0, term, 0.0), 0)
        if SEPARATE_HARD:
            z1 += tl.sum(tl.where(inside, tl.exp(_shift(s, ms)), 0.0), 0)

    if KIND == 2:
        soft = sq
    elif KIND == 0:
        soft = dot / zt + tl.log(zs) - tl.log(zt)
    else:
        soft = dot / zt + tl.log(zs)
    loss = tl.where(use_soft, ws * soft, 0.0)
    if HAS_HARD:
        if not SEPARATE_HARD:
            z1 = zs
        s_label = tl.load(s_row + label).to(ACC)
        hard = tl.log(z1) - _shift(s_label, ms)
        loss += tl.where(use_hard, wh * hard, 0.0)
    tl.store(loss_ptr + row, tl.where(skip, 0.0, loss))

    if COMPUTE_GRAD:
        g_row = g_ptr + row * V
        for start in range(0, V, BLOCK):
            cols = start + offs
            inside = cols < V
            s = tl.load(s_row + cols, mask=inside, other=0.0).to(ACC)
            t = tl.load(t_row + cols, mask=inside, other=0.0).to(ACC)
            if KIND == 2:
                g = 2.0 * ws * tl.where(s == t, 0.0, s - t)
            else:
                # exp(x - m) / z rounds once less than exp(x - lse): keep the shift and the sum apart
                q = tl.exp(_shift(s, ms) * inv_t) / zs
                p = tl.exp(_shift(t, mt) * inv_t) / zt
                g = tl.where(s_inf, 0.0, ws * inv_t * (q - p))
            g = tl.where(use_soft, g, 0.0)
            if HAS_HARD:
                p1 = tl.exp(_shift(s, ms)) / z1
                g += tl.where(use_hard & (ms != float("inf")),
                              wh * (p1 - tl.where(cols == label, 1.0, 0.0)), 0.0)
            g = tl.where(skip, 0.0, g)
            tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=inside)


def kd_loss(student, teacher, labels, soft_weight, hard_weight, kind: int, temperature: float,
            compute_grad: bool):
    """Same contract as torch.ops.kdfast.kd_loss (see csrc/cpu/softmax_kd.cpp)."""
    student, teacher = student.contiguous(), teacher.contiguous()
    n, v = student.shape
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    loss = torch.empty(n, dtype=acc, device=student.device)
    grad = torch.empty_like(student) if compute_grad else student.new_empty(0)
    if n == 0:
        return loss, grad
    has_hard = hard_weight is not None
    block = min(4096, triton.next_power_of_2(v))
    _kd_loss_kernel[(n,)](
        student, teacher, grad if compute_grad else student,
        labels if has_hard else soft_weight, soft_weight,
        hard_weight if has_hard else soft_weight, loss, v, 1.0 / temperature,
        KIND=kind, HAS_HARD=has_hard,
        # the hard term's softmax needs its own sums unless it is the soft term's (KL/CE at T=1)
        SEPARATE_HARD=has_hard and (kind == 2 or temperature != 1.0),
        COMPUTE_GRAD=compute_grad, ACC=_ACC.get(student.dtype, tl.float32), BLOCK=block,
        num_warps=8 if block >= 2048 else 4,
    )
    return loss, grad
