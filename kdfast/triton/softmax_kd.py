"""Triton kernel for the fused softmax-distillation loss family (see kdfast.reference.softmax_kd).

One program per row. Pass 1 streams the row once with an online softmax for student and
teacher (and the student at temperature 1 for the hard term), accumulating the
teacher-weighted dot product with the same rescaling, which gives the loss. Pass 2, only when
a gradient is wanted, re-reads the row and writes the gradient with the final statistics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_ACC = {torch.float64: tl.float64}


@triton.jit
def _online(m, z, x):
    """Adds the block x to a running (max, sum of exp) pair; returns the new pair and weights."""
    m_new = tl.maximum(m, tl.max(x, 0))
    dead = m_new == float("-inf")
    alpha = tl.where(dead, 1.0, tl.exp(m - m_new))
    e = tl.where(dead, 0.0, tl.exp(x - m_new))
    return m_new, z * alpha + tl.sum(e, 0), alpha, e


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
    neg_inf = float("-inf")
    offs = tl.arange(0, BLOCK)

    ms = tl.full((), neg_inf, ACC)  # student max (scaled by 1/T), its exp sum
    zs = tl.zeros((), ACC)
    mt = tl.full((), neg_inf, ACC)  # teacher, and the teacher-weighted dot product
    zt = tl.zeros((), ACC)
    dot = tl.zeros((), ACC)
    m1 = tl.full((), neg_inf, ACC)  # student at temperature 1 for the hard term
    z1 = tl.zeros((), ACC)
    sq = tl.zeros((), ACC)
    for start in range(0, V, BLOCK):
        cols = start + offs
        inside = cols < V
        s = tl.load(s_row + cols, mask=inside, other=neg_inf).to(ACC)
        t = tl.load(t_row + cols, mask=inside, other=neg_inf).to(ACC)
        if KIND == 2:
            d = tl.where(s == t, 0.0, s - t)
            sq += tl.sum(d * d, 0)
        else:
            ms, zs, _, _ = _online(ms, zs, s * inv_t)
            mt, zt, alpha, et = _online(mt, zt, t * inv_t)
            if KIND == 0:
                d = (t - s) * inv_t
            else:
                d = -s * inv_t
            dot = dot * alpha + tl.sum(tl.where(et > 0, et * d, 0.0), 0)
        if SEPARATE_HARD:
            m1, z1, _, _ = _online(m1, z1, s)

    if KIND == 2:
        dead = m1 == neg_inf if SEPARATE_HARD else False
        soft = sq
    else:
        dead = (ms == neg_inf) | (mt == neg_inf)
        if KIND == 0:
            soft = dot / zt + (tl.log(zs) - tl.log(zt)) + (ms - mt)
        else:
            soft = dot / zt + ms + tl.log(zs)
    if HAS_HARD:
        if not SEPARATE_HARD:
            m1 = ms
            z1 = zs
        hard = m1 + tl.log(z1) - tl.load(s_row + label).to(ACC)
        loss = ws * soft + wh * hard
        silent = (ws == 0) & (wh == 0)
    else:
        loss = ws * soft
        silent = ws == 0
    skip = dead | silent
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
                q = tl.exp(s * inv_t - ms) / zs
                p = tl.exp(t * inv_t - mt) / zt
                g = ws * inv_t * (q - p)
            if HAS_HARD:
                g += wh * (tl.exp(s - m1) / z1 - tl.where(cols == label, 1.0, 0.0))
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
        SEPARATE_HARD=has_hard and (kind == 2 or temperature != 1.0),
        COMPUTE_GRAD=compute_grad, ACC=_ACC.get(student.dtype, tl.float32), BLOCK=block,
        num_warps=8 if block >= 2048 else 4,
    )
    return loss, grad
