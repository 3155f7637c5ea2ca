"""The fused softmax-distillation op family: registration, autograd and backend choice.

``kd_loss(student, teacher, labels, soft_weight, hard_weight, kind, temperature, backend)``
returns per-row losses ([N], float32; float64 for float64 input) for [N, V] logits. The
compiled kernels (``torch.ops.kdfast.kd_loss`` on CPU/CUDA, ``kdfast::kd_loss_triton``)
write the student gradient in the same pass as the loss; backward only scales it by the
incoming gradient. Teacher gradients come from the reference: when the teacher requires
grad (rare in distillation), the reference path runs instead of a fused kernel.
"""
from __future__ import annotations

import torch

from kdfast import _ext
from kdfast.ops import _backend
from kdfast.reference.softmax_kd import kd_loss_rows as _reference

KINDS = {"kl": 0, "soft_ce": 1, "mse": 2}


def _fake(student, teacher, labels, soft_weight, hard_weight, kind, temperature, compute_grad):
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    loss = student.new_empty(student.shape[0], dtype=acc)
    grad = torch.empty_like(student) if compute_grad else student.new_empty(0)
    return loss, grad


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zeros for the (non-differentiable) gradient output
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, _grad_of_grad):
    (grad,) = ctx.saved_tensors
    if grad.numel() == 0 and grad_loss is not None and grad_loss.numel() > 0:
        raise RuntimeError(
            "kdfast kd_loss: backward called but the forward ran without compute_grad=True"
        )
    if grad_loss is None:
        return (None,) * 8
    nones = (None,) * 7
    if _is_one_on_cpu(grad_loss):
        # loss.backward() on CPU: hand autograd the saved gradient itself. Without
        # retain_graph it is released first and autograd adopts the buffer (no copy); with
        # retain_graph autograd copies it, so a second backward still sees it unchanged.
        return (grad,) + nones
    # Never in place: that would break a second backward through the graph.
    return (grad * grad_loss.unsqueeze(-1).to(grad.dtype),) + nones


def _is_one_on_cpu(grad_loss: torch.Tensor) -> bool:
    """Whether the incoming gradient is all ones; checked only where that costs no device sync."""
    return (type(grad_loss) is torch.Tensor and grad_loss.device.type == "cpu"
            and not torch.compiler.is_compiling() and bool((grad_loss == 1).all()))


if _ext.has_op("kd_loss"):  # the schema that the CPU and CUDA kernels implement
    torch.library.register_fake("kdfast::kd_loss")(_fake)
    torch.library.register_autograd("kdfast::kd_loss", _backward, setup_context=_setup_context)


def _triton_impl(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                 soft_weight: torch.Tensor, hard_weight: torch.Tensor | None, kind: int,
                 temperature: float, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from kdfast.triton.softmax_kd import kd_loss

    return kd_loss(student, teacher, labels, soft_weight, hard_weight, kind, temperature,
                   compute_grad)


kd_loss_triton = torch.library.custom_op("kdfast::kd_loss_triton", mutates_args=())(_triton_impl)
kd_loss_triton.register_fake(_fake)
kd_loss_triton.register_autograd(_backward, setup_context=_setup_context)


def kd_loss(student, teacher, labels, soft_weight, hard_weight, kind: int, temperature: float,
            backend: str = "auto") -> torch.Tensor:
    """Per-row weighted loss for [N, V] ``student``/``teacher`` (already validated)."""
    name = _backend.resolve(backend, student.device)
    if name == "reference" or teacher.requires_grad:
        return _reference(student, teacher, labels, soft_weight, hard_weight, kind, temperature)
    compute_grad = torch.is_grad_enabled() and student.requires_grad
    op = torch.ops.kdfast.kd_loss if name in ("cpu", "cuda") else kd_loss_triton
    loss, _ = op(student, teacher, labels, soft_weight, hard_weight, kind, float(temperature),
                 compute_grad)
    return loss
