"""The fused attention-map loss family: registration, autograd and backend choice.

``attention_loss(student, teacher, mask, scale, kind, temperature, backend)`` returns the
per-layer losses ([n_layers], float32; float64 for float64 input) for lists of [B, H, L, L]
maps (see kdfast.reference.attention for the definition). The compiled kernels
(``torch.ops.kdfast.attention_loss`` on CPU/CUDA, ``kdfast::attention_loss_triton``) take
every layer in one launch through per-layer pointers (no stacking copy) and write the student
gradient in the same pass; backward only scales it by the incoming per-layer gradient.
When the teacher requires grad (rare in distillation), the reference path runs instead.
"""
from __future__ import annotations

import torch

from kdfast import _ext
from kdfast.ops import _backend
from kdfast.reference.attention import attention_loss_layers as _reference

KINDS = {"tinybert": 0, "mse": 1, "kl": 2}


def _fake(student, teacher, mask, scale, kind, temperature, compute_grad):
    acc = torch.float64 if student[0].dtype == torch.float64 else torch.float32
    loss = student[0].new_empty(len(student), dtype=acc)
    grads = [torch.empty_like(s) for s in student] if compute_grad else []
    return loss, grads


def _setup_context(ctx, inputs, output):
    grads = output[1]
    ctx.mark_non_differentiable(*grads)
    # Without this, autograd fills a zero "gradient" for every returned gradient buffer
    # (a full write of n_layers maps) before calling backward.
    ctx.set_materialize_grads(False)
    ctx.n_layers = len(inputs[0])
    ctx.save_for_backward(*grads)


def _backward(ctx, grad_loss, _grad_of_grads):
    grads = ctx.saved_tensors  # raises if a previous backward already used them in place
    if grad_loss is None:
        return [None] * len(grads), [None] * len(grads), None, None, None, None, None
    if len(grads) != ctx.n_layers:
        raise RuntimeError(
            "kdfast attention_loss: backward called but the forward ran without compute_grad=True"
        )
    if torch.compiler.is_compiling() or not _eager_tensor(grad_loss):
        scaled = [g * grad_loss[i].to(g.dtype) for i, g in enumerate(grads)]
    elif grad_loss.device.type == "cpu":
        # The fused gradient buffers belong to this node alone, so they are handed out as the
        # gradient itself: no copy, and no pass at all where the layer's scale is 1 (reading
        # a CPU scalar is no device sync). A second backward through the same graph
        # (retain_graph=True) then fails with autograd's "modified by an inplace operation".
        scaled = [g if w == 1.0 else g.mul_(w) for g, w in zip(grads, grad_loss.tolist())]
    else:
        scaled = [g.mul_(grad_loss[i].to(g.dtype)) for i, g in enumerate(grads)]
    return scaled, [None] * len(grads), None, None, None, None, None


def _eager_tensor(x) -> bool:
    """A plain tensor (not a fake/functional one from a torch.compile trace)."""
    return type(x) is torch.Tensor and not torch._C._functorch.is_functorch_wrapped_tensor(x)


if _ext.has("cpu") or _ext.module("cuda_built") is not None or _ext.has("cuda"):
    torch.library.register_fake("kdfast::attention_loss")(_fake)
    torch.library.register_autograd("kdfast::attention_loss", _backward,
                                    setup_context=_setup_context)


def _triton_impl(student: list[torch.Tensor], teacher: list[torch.Tensor],
                 mask: torch.Tensor | None, scale: torch.Tensor, kind: int, temperature: float,
                 compute_grad: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    from kdfast.triton.attention import attention_loss

    return attention_loss(student, teacher, mask, scale, kind, temperature, compute_grad)


attention_loss_triton = torch.library.custom_op("kdfast::attention_loss_triton",
                                                mutates_args=())(_triton_impl)
attention_loss_triton.register_fake(_fake)
attention_loss_triton.register_autograd(_backward, setup_context=_setup_context)


def attention_loss(student, teacher, mask, scale, kind: int, temperature: float = 1.0,
                   backend: str = "auto") -> torch.Tensor:
    """Per-layer losses for lists of [B, H, L, L] maps (already validated)."""
    name = _backend.resolve(backend, student[0].device)
    if name == "reference" or any(t.requires_grad for t in teacher):
        return _reference(student, teacher, mask, scale, kind, temperature)
    compute_grad = torch.is_grad_enabled() and any(s.requires_grad for s in student)
    op = torch.ops.kdfast.attention_loss if name in ("cpu", "cuda") else attention_loss_triton
    loss, _ = op(list(student), list(teacher), mask, scale, kind, float(temperature), compute_grad)
    return loss
