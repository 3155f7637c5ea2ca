"""The fused softmax-distillation op family: registration, backend choice.

``kd_loss(student, teacher, labels, soft_weight, hard_weight, kind, temperature, backend)``
returns per-row losses ([N], float32; float64 for float64 input) for [N, V] logits (see
kdfast.reference.softmax_kd for the definition). The compiled kernels
(``torch.ops.kdfast.kd_loss`` on CPU/CUDA, ``kdfast::kd_loss_triton``) write the student
gradient in the same pass as the loss; their autograd formula is the shared fused-gradient
rule of kdfast.ops._fused. When the teacher requires grad (rare in distillation), the
reference path runs instead of a fused kernel, which differentiates both inputs.
"""
from __future__ import annotations

from typing import List, Optional, Tuple  # torch 2.4 takes these forms in a custom_op

import torch

from kdfast.ops import _backend, _fused
from kdfast.reference.kinds import KD_KINDS as KINDS  # noqa: F401  (re-exported)
from kdfast.reference.softmax_kd import kd_loss_rows as _reference

FAMILY = "the softmax-distillation losses"


def _fake(student, teacher, labels, soft_weight, hard_weight, kind, temperature, compute_grad):
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    loss = student.new_empty(student.shape[0], dtype=acc)
    grad = torch.empty_like(student) if compute_grad else student.new_empty(0)
    return loss, grad


def _weight(grad_loss, i, grad):
    return grad_loss.unsqueeze(-1)  # one incoming gradient per row


_RULE = dict(fake=_fake, reference=_reference, weight=_weight)

# the schema the CPU and CUDA kernels implement (None when kdfast._C is absent)
kd_loss_compiled = _fused.register("kdfast::kd_loss", **_RULE)


def _triton_impl(student: torch.Tensor, teacher: torch.Tensor, labels: Optional[torch.Tensor],
                 soft_weight: torch.Tensor, hard_weight: Optional[torch.Tensor], kind: int,
                 temperature: float, compute_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    from kdfast.triton.softmax_kd import kd_loss

    return kd_loss(student, teacher, labels, soft_weight, hard_weight, kind, temperature,
                   compute_grad)


kd_loss_triton = _fused.custom_op("kd_loss_triton", _triton_impl, **_RULE)


def kd_loss(student, teacher, labels, soft_weight, hard_weight, kind: int, temperature: float,
            backend: str = "auto") -> torch.Tensor:
    """Per-row weighted loss for [N, V] ``student``/``teacher`` (already validated)."""
    name = _backend.resolve(backend, student.device, family=FAMILY)
    if name == "reference" or teacher.requires_grad:
        return _reference(student, teacher, labels, soft_weight, hard_weight, kind, temperature)
    compute_grad = torch.is_grad_enabled() and student.requires_grad
    op = kd_loss_compiled if name in ("cpu", "cuda") else kd_loss_triton
    loss, _ = op(student, teacher, labels, soft_weight, hard_weight, kind, float(temperature),
                 compute_grad)
    return loss
