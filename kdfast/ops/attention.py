"""The fused attention-map loss family: registration, backend choice.

``attention_loss(student, teacher, mask, scale, kind, temperature, backend)`` returns the
per-layer losses ([n_layers], float32; float64 for float64 input) for lists of [B, H, L, L]
maps (see kdfast.reference.attention for the definition). The compiled kernels
(``torch.ops.kdfast.attention_loss`` on CPU/CUDA, ``kdfast::attention_loss_triton``) take
every layer in one launch through per-layer pointers (no stacking copy) and write the student
gradient in the same pass; their autograd formula is the shared fused-gradient rule of
kdfast.ops._fused. When the teacher requires grad (rare in distillation), the reference path
runs instead.
"""
from __future__ import annotations

from typing import List, Optional, Tuple  # torch 2.4 takes these forms in a custom_op

import torch

from kdfast.ops import _backend, _fused
from kdfast.reference.attention import attention_loss_layers as _reference
from kdfast.reference.kinds import ATTN_KINDS as KINDS  # noqa: F401  (re-exported)

FAMILY = "the attention-map losses"


def _fake(student, teacher, mask, scale, kind, temperature, compute_grad):
    acc = torch.float64 if student[0].dtype == torch.float64 else torch.float32
    loss = student[0].new_empty(len(student), dtype=acc)
    grads = [torch.empty_like(s) for s in student] if compute_grad else []
    return loss, grads


def _weight(grad_loss, i, grad):
    return grad_loss[i]  # one incoming gradient per layer


_RULE = dict(fake=_fake, reference=_reference, weight=_weight)

attention_loss_compiled = _fused.register("kdfast::attention_loss", **_RULE)


def _triton_impl(student: List[torch.Tensor], teacher: List[torch.Tensor],
                 mask: Optional[torch.Tensor], scale: torch.Tensor, kind: int, temperature: float,
                 compute_grad: bool) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    from kdfast.triton.attention import attention_loss

    return attention_loss(student, teacher, mask, scale, kind, temperature, compute_grad)


attention_loss_triton = _fused.custom_op("attention_loss_triton", _triton_impl, **_RULE)


def attention_loss(student, teacher, mask, scale, kind: int, temperature: float = 1.0,
                   backend: str = "auto") -> torch.Tensor:
    """Per-layer losses for lists of [B, H, L, L] maps (already validated)."""
    name = _backend.resolve(backend, student[0].device, family=FAMILY)
    if name == "reference" or any(t.requires_grad for t in teacher):
        return _reference(student, teacher, mask, scale, kind, temperature)
    compute_grad = torch.is_grad_enabled() and any(s.requires_grad for s in student)
    op = attention_loss_compiled if name in ("cpu", "cuda") else attention_loss_triton
    loss, _ = op(list(student), list(teacher), mask, scale, kind, float(temperature), compute_grad)
    return loss
