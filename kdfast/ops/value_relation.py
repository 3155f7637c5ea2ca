"""MiniLM value-relation KL: registration, backend choice.

``value_relation(vs, vt, mask, heads, backend)`` returns the scalar loss for [B, L, D] values
(see kdfast.reference.attention.value_relation_loss). The fused kernel
(``torch.ops.kdfast.value_relation``, CPU only for now) keeps each relation row in a per-thread
scratch, never storing the L x L relation matrices, and writes the student gradient in the
same pass; its autograd formula is the shared fused-gradient rule of kdfast.ops._fused. Other
devices, or a teacher that requires grad, use the reference (which does materialise the
relations).
"""
from __future__ import annotations

import torch

from kdfast.ops import _backend, _fused
from kdfast.reference.attention import value_relation_loss

FAMILY = "value_relation_kl"
# Only a CPU kernel exists so far: on CUDA, "auto" (and a forced KDFAST_BACKEND) use the
# reference; an explicit backend="cuda"/"triton" raises (see kdfast.ops._backend).
PREFERENCE = {"cpu": ("cpu", "reference"), "cuda": ("reference",)}


def _fake(student, teacher, mask, scale, heads, compute_grad):
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    grad = torch.empty_like(student) if compute_grad else student.new_empty(0)
    return student.new_empty(1, dtype=acc), grad


def _reference(student, teacher, mask, scale, heads):
    return value_relation_loss(student, teacher, mask, scale, heads).reshape(1)


def _weight(grad_loss, i, grad):
    return grad_loss.reshape(())


value_relation_compiled = _fused.register("kdfast::value_relation", fake=_fake,
                                          reference=_reference, weight=_weight)


def value_relation(vs, vt, mask, heads: int, backend: str = "auto") -> torch.Tensor:
    """Scalar loss for [B, L, D] student/teacher values (already validated); ``mask`` is
    [B, L] 0/1 in the accumulation dtype, or None."""
    name = _backend.resolve(backend, vs.device, PREFERENCE, family=FAMILY)
    acc = torch.float64 if vs.dtype == torch.float64 else torch.float32
    if mask is None:
        scale = torch.full((1,), 1.0 / max(1, vs.shape[0] * vs.shape[1] * heads), dtype=acc,
                           device=vs.device)
    else:
        scale = (1.0 / (heads * mask.sum()).clamp_min(1)).reshape(1)
    if name == "reference" or vt.requires_grad:
        return _reference(vs, vt, mask, scale, heads)[0]
    compute_grad = torch.is_grad_enabled() and vs.requires_grad
    loss, _ = value_relation_compiled(vs, vt, mask, scale, heads, compute_grad)
    return loss[0]
