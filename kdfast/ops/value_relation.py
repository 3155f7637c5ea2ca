"""MiniLM value-relation KL: registration, autograd and backend choice.

``value_relation(vs, vt, mask, heads, backend)`` returns the scalar loss for [B, L, D] values
(see kdfast.reference.attention.value_relation_kl). The fused kernel
(``torch.ops.kdfast.value_relation``, CPU only for now) keeps each relation row in a per-thread
scratch, never storing the L x L relation matrices, and writes the student gradient in the
same pass; backward only scales it. Other devices, or a teacher that requires grad, use the
reference (which does materialise the relations).
"""
from __future__ import annotations

import torch

from kdfast import _ext
from kdfast.ops import _backend
from kdfast.reference.attention import value_relation_kl as _reference

# Only a CPU kernel exists so far: on CUDA, "auto" falls back to the reference.
PREFERENCE = {"cpu": ("cpu", "reference"), "cuda": ("reference",)}


def _fake(student, teacher, mask, scale, heads, compute_grad):
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    grad = torch.empty_like(student) if compute_grad else student.new_empty(0)
    return student.new_empty(1, dtype=acc), grad


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zero fill for the gradient output
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, _grad_of_grad):
    (grad,) = ctx.saved_tensors
    if grad_loss is None:
        return None, None, None, None, None, None
    if grad.numel() == 0 and ctx.needs_input_grad[0]:
        raise RuntimeError("kdfast value_relation: backward called but the forward ran without compute_grad=True")
    return grad * grad_loss.to(grad.dtype), None, None, None, None, None


_HAS_OP = _ext.has("cpu")
if _HAS_OP:
    torch.library.register_fake("kdfast::value_relation")(_fake)
    torch.library.register_autograd("kdfast::value_relation", _backward, setup_context=_setup_context)


def value_relation(vs, vt, mask, heads: int, backend: str = "auto") -> torch.Tensor:
    """Scalar loss for [B, L, D] student/teacher values (already validated)."""
    name = _backend.resolve(backend, vs.device, PREFERENCE)
    if name not in ("cpu", "reference"):
        raise ValueError(f"value_relation_kl has no {name!r} backend yet; use 'cpu' or 'reference'")
    acc = torch.float64 if vs.dtype == torch.float64 else torch.float32
    if name == "reference" or vt.requires_grad:
        out = _reference(vs, vt, None if mask is None else mask != 0, heads)
        return out
    if mask is None:
        scale = torch.full((1,), 1.0 / max(1, vs.shape[0] * vs.shape[1] * heads), dtype=acc)
    else:
        scale = (1.0 / (heads * mask.sum()).clamp_min(1)).reshape(1)
    compute_grad = torch.is_grad_enabled() and vs.requires_grad
    loss, _ = torch.ops.kdfast.value_relation(vs, vt, mask, scale, heads, compute_grad)
    return loss[0]
