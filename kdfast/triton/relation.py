"""Triton kernels for the projection-level relation losses (see kdfast.reference.relation).

Same scheme as the C++ CPU kernel (csrc/cpu/relation.cpp), flash-attention style:

* ``_rel_fwd``: grid (B*R planes, query blocks of BM rows). The block's A_s, A_t rows stay in
  registers; key tiles of BN keys are streamed. KL: pass 1 keeps the running max and exp-sum
  of both rows, pass 2 adds ``sum_k p_t (log p_t - log p_s)`` and, when asked, accumulates
  dA_s = c_s * dS B_s with dS = w_q (p_s - p_t). MSE kinds: one pass. Per-row lse go to an
  O(B*R*L) buffer; per-program partial losses are summed afterwards.
* ``_rel_bwd``: grid (planes, key blocks of BN keys): recomputes the score tiles of every query
  tile against the block and accumulates dB_s = c_s * dS^T A_s (no atomics).

Head dims are padded to a power of two >= 16 (tl.dot's minimum); at most 256.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_ACC = {torch.float64: tl.float64}


@triton.jit
def _tiles(a_ptr, b_ptr, rows, cols, row_ok, col_ok, d, D: tl.constexpr, c, ACC: tl.constexpr):
    """c * A[rows] B[cols]^T for one plane (A, B at their plane base); rows / columns that do
    not count load as 0, so that whatever they hold (NaN) never reaches a gradient product."""
    e = tl.arange(0, D)
    a = tl.load(a_ptr + rows[:, None] * d + e[None, :],
                mask=row_ok[:, None] & (e[None, :] < d), other=0.0).to(ACC)
    b = tl.load(b_ptr + cols[:, None] * d + e[None, :],
                mask=col_ok[:, None] & (e[None, :] < d), other=0.0).to(ACC)
    return tl.dot(a, tl.trans(b), input_precision="ieee", out_dtype=ACC) * c, a, b


@triton.jit
def _row_weights(mask_ptr, b, rows, L, scale, HAS_MASK: tl.constexpr, ROW_MASKED: tl.constexpr,
                 ACC: tl.constexpr):
    ok = rows < L
    if HAS_MASK and ROW_MASKED:
        w = tl.load(mask_ptr + b * L + rows, mask=ok, other=0.0).to(ACC)
    else:
        w = tl.where(ok, 1.0, 0.0).to(ACC)
    return scale * w


@triton.jit
def _key_weights(mask_ptr, b, cols, L, HAS_MASK: tl.constexpr, ACC: tl.constexpr):
    ok = cols < L
    if HAS_MASK:
        w = tl.load(mask_ptr + b * L + cols, mask=ok, other=0.0).to(ACC)
        return tl.where(w != 0, 1.0, 0.0).to(ACC)
    return tl.where(ok, 1.0, 0.0).to(ACC)


@triton.jit
def _grad_tile(s, t, cq, wk, lse_s, lse_t, KIND: tl.constexpr):
    """(loss per row, dS) of one tile; s, t: scores; cq: row weights; wk: key weights."""
    real = (wk != 0)[None, :]
    if KIND == 2:
        ls = tl.where(real, s - lse_s[:, None], float("-inf"))
        lt = tl.where(real, t - lse_t[:, None], float("-inf"))
        ps = tl.exp(ls)
        pt = tl.exp(lt)
        # pt 0 (masked key) or a dead row (lse -inf) adds 0; NaN in the teacher's row adds NaN
        live = (pt != 0) & (lse_t != float("-inf"))[:, None]
        loss = tl.sum(tl.where(live, pt * (lt - ls), 0.0), 1)
        g = cq[:, None] * (ps - pt)
        g = tl.where(real & (cq != 0)[:, None], g, 0.0)
    else:
        if KIND == 0:
            live = (s <= -100.0) == 0  # NaN stays live (and NaN)
            s = tl.where(live, s, 0.0)
            t = tl.where(t <= -100.0, 0.0, t)
        else:
            live = real
        diff = tl.where(real & (s != t), s - t, 0.0)
        loss = tl.sum(diff * diff, 1)
        g = tl.where(live & (cq != 0)[:, None], (2.0 * cq)[:, None] * diff, 0.0)
    return tl.where(cq != 0, cq * loss, 0.0), g


@triton.jit
def _rel_fwd(as_ptr, bs_ptr, at_ptr, bt_ptr, ga_ptr, mask_ptr, scale_ptr, lse_ptr, part_ptr,
             R, L, ds, dt, n_qb, cs, ct,
             KIND: tl.constexpr, HAS_MASK: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
             ACC: tl.constexpr, DS: tl.constexpr, DT: tl.constexpr, BM: tl.constexpr,
             BN: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)
    qb = tl.program_id(1)
    b = p // R
    rows = qb * BM + tl.arange(0, BM)
    scale = tl.load(scale_ptr).to(ACC)
    cq = _row_weights(mask_ptr, b, rows, L, scale, HAS_MASK, KIND != 0, ACC)
    a_s = as_ptr + p * L * ds
    b_s = bs_ptr + p * L * ds
    a_t = at_ptr + p * L * dt
    b_t = bt_ptr + p * L * dt
    lse_s = tl.zeros([BM], dtype=ACC)
    lse_t = tl.zeros([BM], dtype=ACC)
    if KIND == 2:
        ms = tl.full([BM], float("-inf"), dtype=ACC)
        mt = tl.full([BM], float("-inf"), dtype=ACC)
        zs = tl.zeros([BM], dtype=ACC)
        zt = tl.zeros([BM], dtype=ACC)
        for n0 in range(0, L, BN):
            cols = n0 + tl.arange(0, BN)
            wk = _key_weights(mask_ptr, b, cols, L, HAS_MASK, ACC)
            real = (wk != 0)[None, :]
            s, _a, _b = _tiles(a_s, b_s, rows, cols, cq != 0, wk != 0, ds, DS, cs, ACC)
            t, _a, _b = _tiles(a_t, b_t, rows, cols, cq != 0, wk != 0, dt, DT, ct, ACC)
            s = tl.where(real, s, float("-inf"))
            t = tl.where(real, t, float("-inf"))
            ns = tl.maximum(ms, tl.max(tl.where(s == s, s, float("-inf")), 1))
            nt = tl.maximum(mt, tl.max(tl.where(t == t, t, float("-inf")), 1))
            us = tl.where(ns == float("-inf"), 0.0, ns)
            ut = tl.where(nt == float("-inf"), 0.0, nt)
            zs = tl.where(ms == float("-inf"), 0.0, zs * tl.exp(ms - us)) + tl.sum(tl.exp(s - us[:, None]), 1)
            zt = tl.where(mt == float("-inf"), 0.0, zt * tl.exp(mt - ut)) + tl.sum(tl.exp(t - ut[:, None]), 1)
            ms = ns
            mt = nt
        lse_s = ms + tl.log(zs)
        lse_t = mt + tl.log(zt)
        if COMPUTE_GRAD:
            ok = rows < L
            tl.store(lse_ptr + (p * L + rows) * 2, lse_s, mask=ok)
            tl.store(lse_ptr + (p * L + rows) * 2 + 1, lse_t, mask=ok)
    total = tl.zeros([BM], dtype=ACC)
    dq = tl.zeros([BM, DS], dtype=ACC)
    for n0 in range(0, L, BN):
        cols = n0 + tl.arange(0, BN)
        wk = _key_weights(mask_ptr, b, cols, L, HAS_MASK, ACC)
        s, _a, kb = _tiles(a_s, b_s, rows, cols, cq != 0, wk != 0, ds, DS, cs, ACC)
        t, _a, _b = _tiles(a_t, b_t, rows, cols, cq != 0, wk != 0, dt, DT, ct, ACC)
        row_loss, g = _grad_tile(s, t, cq, wk, lse_s, lse_t, KIND)
        total += row_loss
        if COMPUTE_GRAD:
            dq += tl.dot(g, kb, input_precision="ieee", out_dtype=ACC)
    tl.store(part_ptr + p * n_qb + qb, tl.sum(total, 0))
    if COMPUTE_GRAD:
        e = tl.arange(0, DS)
        tl.store(ga_ptr + p * L * ds + rows[:, None] * ds + e[None, :],
                 (dq * cs).to(ga_ptr.dtype.element_ty), mask=(rows[:, None] < L) & (e[None, :] < ds))


@triton.jit
def _rel_bwd(as_ptr, bs_ptr, at_ptr, bt_ptr, gb_ptr, mask_ptr, scale_ptr, lse_ptr,
             R, L, ds, dt, cs, ct,
             KIND: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr, DS: tl.constexpr,
             DT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)
    kb = tl.program_id(1)
    b = p // R
    cols = kb * BN + tl.arange(0, BN)
    scale = tl.load(scale_ptr).to(ACC)
    wk = _key_weights(mask_ptr, b, cols, L, HAS_MASK, ACC)
    a_s = as_ptr + p * L * ds
    b_s = bs_ptr + p * L * ds
    a_t = at_ptr + p * L * dt
    b_t = bt_ptr + p * L * dt
    dk = tl.zeros([BN, DS], dtype=ACC)
    for m0 in range(0, L, BM):
        rows = m0 + tl.arange(0, BM)
        cq = _row_weights(mask_ptr, b, rows, L, scale, HAS_MASK, KIND != 0, ACC)
        s, qa, _b = _tiles(a_s, b_s, rows, cols, cq != 0, wk != 0, ds, DS, cs, ACC)
        t, _a, _b = _tiles(a_t, b_t, rows, cols, cq != 0, wk != 0, dt, DT, ct, ACC)
        if KIND == 2:
            ok = rows < L
            lse_s = tl.load(lse_ptr + (p * L + rows) * 2, mask=ok, other=0.0)
            lse_t = tl.load(lse_ptr + (p * L + rows) * 2 + 1, mask=ok, other=0.0)
        else:
            lse_s = tl.zeros([BM], dtype=ACC)
            lse_t = tl.zeros([BM], dtype=ACC)
        _loss, g = _grad_tile(s, t, cq, wk, lse_s, lse_t, KIND)
        dk += tl.dot(tl.trans(g), qa, input_precision="ieee", out_dtype=ACC)
    e = tl.arange(0, DS)
    tl.store(gb_ptr + p * L * ds + cols[:, None] * ds + e[None, :],
             (dk * cs).to(gb_ptr.dtype.element_ty), mask=(cols[:, None] < L) & (e[None, :] < ds))


def _dim(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def relation_loss(student, teacher, mask, scale, kind: int, compute_grad: bool):
    """Same contract as torch.ops.kdfast.relation_loss (see csrc/cpu/relation.cpp)."""
    s = [x.contiguous() for x in student]
    t = [x.contiguous() for x in teacher]
    bsz, rel, length, ds = s[0].shape
    dt = t[0].shape[-1]
    dev = s[0].device
    acc = torch.float64 if s[0].dtype == torch.float64 else torch.float32
    grads = ([torch.empty_like(x, memory_format=torch.contiguous_format) for x in s]
             if compute_grad else [])
    planes = bsz * rel
    if planes * length == 0:
        for g in grads:
            g.zero_()
        return torch.zeros(1, dtype=acc, device=dev), grads
    bm = bn = 16 if length <= 16 or dev.type != "cuda" else 64
    n_qb = triton.cdiv(length, bm)
    part = torch.empty(planes * n_qb, dtype=acc, device=dev)
    lse = (torch.empty(planes * length * 2, dtype=acc, device=dev)
           if compute_grad and kind == 2 else part)
    m = mask if mask is not None else scale
    a = _ACC.get(s[0].dtype, tl.float32)
    cs, ct = 1.0 / ds ** 0.5, 1.0 / dt ** 0.5
    meta = dict(KIND=kind, HAS_MASK=mask is not None, ACC=a, DS=_dim(ds), DT=_dim(dt), BM=bm, BN=bn)
    _rel_fwd[(planes, n_qb)](s[0], s[1], t[0], t[1], grads[0] if compute_grad else s[0], m,
                             scale, lse, part, rel, length, ds, dt, n_qb, cs, ct,
                             COMPUTE_GRAD=compute_grad, **meta)
    if compute_grad:
        _rel_bwd[(planes, triton.cdiv(length, bn))](s[0], s[1], t[0], t[1], grads[1], m, scale,
                                                    lse, rel, length, ds, dt, cs, ct, **meta)
    return part.sum().reshape(1), grads
