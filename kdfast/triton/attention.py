"""Triton kernel for the fused attention-map loss family (see kdfast.reference.attention).

One launch covers every layer: the grid is (row blocks, layers) and each layer's maps are
reached as ``base + offset[layer]``, where the offsets are the element distances of the
layer tensors from layer 0's (no stacking copy). A program takes ROWS query rows of one
layer, whole rows at a time (L <= BLOCK), computes the loss of those rows and, when asked,
their gradient in the same pass. Per-program partial losses are summed afterwards.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_ACC = {torch.float64: tl.float64}


@triton.jit
def _attention_loss_kernel(s_ptr, t_ptr, g_ptr, s_off_ptr, t_off_ptr, g_off_ptr, mask_ptr,
                           scale_ptr, part_ptr, rows_per_layer, HL, L, n_prog, inv_t,
                           KIND: tl.constexpr, HAS_MASK: tl.constexpr,
                           COMPUTE_GRAD: tl.constexpr, ACC: tl.constexpr,
                           ROWS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    layer = tl.program_id(1)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    row_ok = rows < rows_per_layer
    col_ok = cols < L
    inside = row_ok[:, None] & col_ok[None, :]
    idx = rows[:, None] * L + cols[None, :]
    s_base = s_ptr + tl.load(s_off_ptr + layer)
    t_base = t_ptr + tl.load(t_off_ptr + layer)
    s = tl.load(s_base + idx, mask=inside, other=0.0).to(ACC)
    t = tl.load(t_base + idx, mask=inside, other=0.0).to(ACC)
    scale = tl.load(scale_ptr).to(ACC)
    if HAS_MASK:
        b = rows // HL
        q = rows % L
        wq = tl.load(mask_ptr + b * L + q, mask=row_ok, other=0.0).to(ACC)
        wk = tl.load(mask_ptr + b[:, None] * L + cols[None, :], mask=inside, other=0.0).to(ACC)
    else:
        wq = tl.where(row_ok, 1.0, 0.0).to(ACC)
        wk = tl.where(inside, 1.0, 0.0).to(ACC)
    c = scale * wq
    live_row = (wq != 0)[:, None]
    if KIND == 2:
        real = (wk != 0) & inside
        # maxima over real keys (NaN ignored); a row whose real entries are all -inf (NaN is
        # not -inf), or that has no real key, or a padded query row, counts 0
        smax = tl.max(tl.where(real & (s == s), s, float("-inf")), 1)
        tmax = tl.max(tl.where(real & (t == t), t, float("-inf")), 1)
        s_live = tl.sum(tl.where(real & (s != float("-inf")), 1, 0), 1)
        t_live = tl.sum(tl.where(real & (t != float("-inf")), 1, 0), 1)
        dead = (s_live == 0) | (t_live == 0) | (wq == 0)
        s_inf = smax == float("inf")  # constant student softmax: no gradient through it
        ms = tl.where(dead, 0.0, smax)[:, None]
        mt = tl.where(dead, 0.0, tmax)[:, None]
        # shift (with +inf - +inf = 0) BEFORE scaling by 1/T: no overflow near the float limit
        la = tl.where(real, tl.where(s == ms, 0.0, s - ms) * inv_t, float("-inf"))
        lb = tl.where(real, tl.where(t == mt, 0.0, t - mt) * inv_t, float("-inf"))
        ea = tl.where(real, tl.exp(la), 0.0)
        eb = tl.where(real, tl.exp(lb), 0.0)
        zs = tl.sum(ea, 1)
        zt = tl.sum(eb, 1)
        dot = tl.sum(tl.where(eb > 0, eb * (lb - la), 0.0), 1)
        row_loss = tl.where(dead, 0.0, c * (dot / zt + tl.log(zs) - tl.log(zt)))
        g = (c * inv_t)[:, None] * (ea / zs[:, None] - eb / zt[:, None])
        g = tl.where((dead | s_inf)[:, None] | (real == 0), 0.0, g)
    else:
        if KIND == 0:  # TinyBERT: entries <= -100 (masked keys) count as 0, with zero gradient
            live = (s <= -100.0) == 0  # NaN stays live (and NaN)
            s = tl.where(live, s, 0.0)
            t = tl.where(t <= -100.0, 0.0, t)
        else:
            live = inside
        # masked entries count 0 whatever they hold (NaN and inf too)
        d = tl.where((s == t) | (wk == 0), 0.0, s - t)
        wd = wk * d
        row_loss = tl.where(wq != 0, c * tl.sum(wd * d, 1), 0.0)
        g = tl.where(live & live_row, (2.0 * c)[:, None] * wd, 0.0)
    tl.store(part_ptr + layer * n_prog + pid, tl.sum(row_loss, 0))
    if COMPUTE_GRAD:
        g_base = g_ptr + tl.load(g_off_ptr + layer)
        tl.store(g_base + idx, g.to(g_ptr.dtype.element_ty), mask=inside)


def _offsets(tensors, device):
    base = tensors[0].data_ptr()
    size = tensors[0].element_size()
    diffs = [x.data_ptr() - base for x in tensors]
    if any(d % size for d in diffs):  # never seen: storages are at least dtype-aligned
        raise RuntimeError("kdfast attention_loss (triton): layer tensors are not dtype-aligned")
    return torch.tensor([d // size for d in diffs], dtype=torch.int64, device=device)


def attention_loss(student, teacher, mask, scale, kind: int, temperature: float,
                   compute_grad: bool):
    """Same contract as torch.ops.kdfast.attention_loss (see csrc/cpu/attention_loss.cpp)."""
    s = [x.contiguous() for x in student]
    t = [x.contiguous() for x in teacher]
    n = len(s)
    bsz, heads, length = s[0].shape[:3]
    acc = torch.float64 if s[0].dtype == torch.float64 else torch.float32
    grads = [torch.empty_like(x) for x in s] if compute_grad else []
    rows_per_layer = bsz * heads * length
    if rows_per_layer * length == 0:
        return torch.zeros(n, dtype=acc, device=s[0].device), grads
    block = triton.next_power_of_2(length)
    rows = max(1, min(64, 4096 // block))
    n_prog = triton.cdiv(rows_per_layer, rows)
    part = torch.empty(n, n_prog, dtype=acc, device=s[0].device)
    dev = s[0].device
    g_list = grads if compute_grad else s
    _attention_loss_kernel[(n_prog, n)](
        s[0], t[0], g_list[0], _offsets(s, dev), _offsets(t, dev), _offsets(g_list, dev),
        mask if mask is not None else scale, scale, part, rows_per_layer, heads * length,
        length, n_prog, 1.0 / temperature,
        KIND=kind, HAS_MASK=mask is not None, COMPUTE_GRAD=compute_grad,
        ACC=_ACC.get(s[0].dtype, tl.float32), ROWS=rows, BLOCK=block,
        num_warps=8 if rows * block >= 4096 else 4,
    )
    return part.sum(1), grads
