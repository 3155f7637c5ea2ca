"""Attention distillation straight from the projections: no L x L map is ever materialised.

TinyBERT's attention MSE, MiniLM's attention KL and value relation, and MiniLMv2's Q-Q / K-K /
V-V relations all compare ``S = A B^T / sqrt(d)`` per head between student and teacher. These
functions take the projections (``A``, ``B`` = Q, K for attention; V, V for value relations)
and compute the loss flash-attention style: key tiles streamed with a running log-sum-exp,
the student gradient (dA, dB) accumulated tile by tile. The model can keep its SDPA / flash
attention (capture the projections with :func:`kdfast.models.capture.capture_qkv`); memory is
O(B*H*L*d) instead of O(B*H*L^2).

Inputs are per-head [B, H, L, d] tensors, or [B, L, D] split into ``num_relation_heads``
(MiniLMv2; [B, H, L, d] inputs are re-split the same way when it is given). float32,
bfloat16, float16 or float64; accumulation in float32 (float64 for float64); the loss is
float32 (float64). Gradients flow to the student's projections only. ``attention_mask`` is
the [B, L] padding mask (1/True = real token; None = no padding): padded positions never
contribute, whatever their projections hold (NaN included), except padded *query* rows in
TinyBERT's exact mode, which the official code counts. Limits: head dim 1..256, L <= 65536.
"""
from __future__ import annotations

import torch

from kdfast.losses.intermediate import _acc
from kdfast.losses.intermediate import _mask as padding_mask
from kdfast.ops import _checks
from kdfast.ops import relation as _ops
from kdfast.reference.kinds import ATTN_KL, ATTN_MSE, ATTN_TINYBERT_MSE

MODES = ("tinybert", "masked")

__all__ = ["relation_kl", "attention_kl_qk", "attention_mse_qk"]


def _positive_int(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int or None, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return value


def _split(name, x, heads):
    """[B, R, L, d] contiguous view of ``x`` ([B, H, L, d] or [B, L, D]) with R relation heads."""
    if x.dim() == 4:
        if heads is None or heads == x.shape[1]:
            return x.contiguous()
        x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)  # [B, L, H*d]
    elif x.dim() == 3:
        if heads is None:
            raise ValueError(f"{name} is [B, L, D] {tuple(x.shape)}: pass num_relation_heads "
                             "(or give per-head [B, H, L, d] tensors)")
    else:
        raise ValueError(f"{name} must be [B, H, L, d] or [B, L, D], got shape {tuple(x.shape)}")
    width = x.shape[-1]
    if width == 0 or width % heads:
        raise ValueError(f"{name} width {width} (shape {tuple(x.shape)}) is not a positive "
                         f"multiple of num_relation_heads={heads}")
    return x.reshape(x.shape[0], x.shape[1], heads, width // heads).transpose(1, 2).contiguous()


def _prepare(names, tensors, heads, mask, *, mask_required=False):
    """Checks the four projections and the mask; returns ([A_s, B_s], [A_t, B_t], mask01)."""
    for nm, x in zip(names, tensors):
        _checks.tensor(nm, x)
    for nm, x in zip(names[1:], tensors[1:]):
        _checks.same(names[0], tensors[0], nm, x, shape=False)
    for (na, a), (nb, b) in (((names[0], tensors[0]), (names[1], tensors[1])),
                             ((names[2], tensors[2]), (names[3], tensors[3]))):
        if a.shape != b.shape:
            raise ValueError(f"{na} and {nb} must have the same shape, got {tuple(a.shape)} and "
                             f"{tuple(b.shape)}")
    out = []
    for i, (nm, x) in enumerate(zip(names, tensors)):
        # the same tensor twice (V, V) stays one tensor: shared gradient (a plain loop over
        # "is": the torch 2.4 compiler traces neither id() of a tensor nor next())
        same = [j for j in range(i) if tensors[j] is x]
        out.append(out[same[0]] if same else _split(nm, x, heads))
    sa, sb, ta, tb = out
    if sa.shape[1] != ta.shape[1]:
        raise ValueError(
            f"{names[0]} has {sa.shape[1]} heads but {names[2]} has {ta.shape[1]} (shapes "
            f"{tuple(tensors[0].shape)} and {tuple(tensors[2].shape)}): pass num_relation_heads "
            "to use the same number of relation heads")
    if sa.shape[0] != ta.shape[0] or sa.shape[2] != ta.shape[2]:
        raise ValueError(
            f"{names[0]} and {names[2]} must share B and L, got shapes {tuple(tensors[0].shape)} "
            f"and {tuple(tensors[2].shape)}")
    bsz, _, length, _ = sa.shape
    for nm, x in ((names[0], sa), (names[2], ta)):
        d = x.shape[-1]
        if not 1 <= d <= _ops.MAX_HEAD_DIM:
            raise ValueError(f"{nm} has head dim {d}: the relation kernels take 1 <= d <= "
                             f"{_ops.MAX_HEAD_DIM}")
    if length > _ops.MAX_LENGTH:
        raise ValueError(f"{names[0]} has sequence length {length}: the relation kernels take "
                         f"L <= {_ops.MAX_LENGTH}")
    m = padding_mask(mask, bsz, length, sa, required=mask_required)
    m = None if m is None else m.contiguous()
    return [sa, sb], [ta, tb], m


def _finish(loss, dtype):
    return loss if dtype == torch.float64 else loss.float()


def _kl(names, tensors, attention_mask, num_relation_heads, backend):
    heads = _positive_int("num_relation_heads", num_relation_heads)
    s, t, m = _prepare(names, tensors, heads, attention_mask)
    bsz, rel, length, _ = s[0].shape
    acc = _acc(s[0].dtype)
    if m is None:
        scale = torch.full((1,), 1.0 / max(1, bsz * rel * length), dtype=acc, device=s[0].device)
    else:
        scale = (1.0 / (rel * m.sum()).clamp_min(1)).reshape(1)
    return _finish(_ops.relation_loss(s, t, m, scale, ATTN_KL, backend), s[0].dtype)


def relation_kl(student_a, student_b, teacher_a, teacher_b, *, attention_mask,
                num_relation_heads=None, backend="auto"):
    """Per relation head and real query row, ``KL(softmax(A_t B_t^T / sqrt(d_t)) ||
    softmax(A_s B_s^T / sqrt(d_s)))`` over real keys, averaged over relation heads and real
    query rows (R * sum_b n_b rows; B * R * L without a mask) -- the averaging of
    :func:`kdfast.losses.attention_kl`.

    ``A = Q, B = K`` is MiniLM's attention transfer (:func:`attention_kl_qk`); ``A = B = V``
    (pass the same tensor twice) its value relation; MiniLMv2 uses Q-Q, K-K and V-V with
    [B, L, D] inputs and ``num_relation_heads``. Student and teacher may differ in head dim,
    and in head count when ``num_relation_heads`` re-splits them. No L x L map is stored.
    """
    return _kl(("student_a", "student_b", "teacher_a", "teacher_b"),
               (student_a, student_b, teacher_a, teacher_b), attention_mask, num_relation_heads,
               backend)


def attention_kl_qk(student_q, student_k, teacher_q, teacher_k, *, attention_mask,
                    num_relation_heads=None, backend="auto"):
    """MiniLM self-attention distribution transfer from Q and K ([B, H, L, d] after the
    projections, as :func:`kdfast.models.capture.capture_qkv` records them): equal to
    :func:`kdfast.losses.attention_kl` on the materialised scores ``Q K^T / sqrt(d)`` (+ the
    additive mask) at temperature 1, without materialising them. See :func:`relation_kl`."""
    return _kl(("student_q", "student_k", "teacher_q", "teacher_k"),
               (student_q, student_k, teacher_q, teacher_k), attention_mask, num_relation_heads,
               backend)


def attention_mse_qk(student_q, student_k, teacher_q, teacher_k, *, attention_mask,
                     mode="tinybert", backend="auto"):
    """TinyBERT's attention loss from Q and K ([B, H, L, d]; head counts must match, head dims
    may differ), equal to :func:`kdfast.losses.attention_mse` (``inputs="scores"``) on the
    materialised scores ``Q K^T / sqrt(d)`` + BERT's additive mask, without materialising them.

    ``mode="tinybert"`` (the official code): entries <= -100 count 0 on both sides, so masked
    keys (score + -10000 or + finfo.min) count 0 -- exact whenever the mask value pushes every
    masked score below -100, i.e. |score| < 9900 with -10000, always with finfo.min; padded
    query rows count; mean over B*H*L*L. ``attention_mask`` may be None (no padding).
    ``mode="masked"``: mean over real query x real key pairs (``attention_mask`` required).
    """
    _checks.choice("mode", mode, MODES)
    s, t, m = _prepare(("student_q", "student_k", "teacher_q", "teacher_k"),
                       (student_q, student_k, teacher_q, teacher_k), None, attention_mask,
                       mask_required=mode == "masked")
    bsz, heads, length, _ = s[0].shape
    acc = _acc(s[0].dtype)
    if mode == "tinybert":
        kind = ATTN_TINYBERT_MSE
        scale = torch.full((1,), 1.0 / max(1, bsz * heads * length * length), dtype=acc,
                           device=s[0].device)
    else:
        kind = ATTN_MSE
        n = m.sum(1)
        scale = (1.0 / (heads * (n * n).sum()).clamp_min(1)).reshape(1)
    return _finish(_ops.relation_loss(s, t, m, scale, kind, backend), s[0].dtype)
