"""The ETD unit-importance op: ``unit_taylor(act, grad, units)``.

``out[u] = sum(act * grad)`` over every leading position and over the ``K / units``
consecutive columns of unit ``u`` of the last dimension (``K``), accumulated in float32
(float64 for float64 inputs). With ``act`` a module's activation and ``grad`` the loss
gradient w.r.t. it, this is the first-order Taylor importance of the parameters that
produce (or read) those columns -- see :mod:`kdfast.etd.importance`. Backends: the fused
C++ CPU kernel and CUDA kernel (``torch.ops.kdfast.unit_taylor``) and the reference.
"""
from __future__ import annotations

import torch

from kdfast import _ext
from kdfast.ops import _backend, _checks
from kdfast.reference.importance import unit_taylor as _reference


def _fake(act, grad, units):
    acc = torch.float64 if act.dtype == torch.float64 else torch.float32
    return act.new_empty(units, dtype=acc)


def _setup_context(ctx, inputs, output):
    act, grad, units = inputs
    ctx.units = units
    ctx.save_for_backward(act, grad)


def _backward(ctx, grad_out):
    act, grad = ctx.saved_tensors
    per_unit = act.shape[-1] // ctx.units
    go = grad_out.repeat_interleave(per_unit).to(act.dtype)
    d_act = grad * go if ctx.needs_input_grad[0] else None
    d_grad = act * go if ctx.needs_input_grad[1] else None
    return d_act, d_grad, None


if _ext.has_op("unit_taylor"):
    torch.library.register_fake("kdfast::unit_taylor")(_fake)
    torch.library.register_autograd("kdfast::unit_taylor", _backward, setup_context=_setup_context)


def check(act, grad, units) -> None:
    """Validates the arguments of :func:`unit_taylor` (ValueError/TypeError, no kernel runs)."""
    _checks.tensor("act", act)
    _checks.tensor("grad", grad)
    _checks.same("act", act, "grad", grad)
    if act.dim() < 1:
        raise ValueError(f"act must have at least 1 dimension [..., K], "
                         f"got shape {tuple(act.shape)}")
    if isinstance(units, bool) or not isinstance(units, int):
        raise TypeError(f"units must be an int, got {type(units).__name__}")
    k = act.shape[-1]
    if k == 0:
        raise ValueError(f"act must have a last dim K >= 1 (the units' columns), got shape "
                         f"{tuple(act.shape)}")
    if units < 1 or k % units != 0:
        raise ValueError(f"units must be >= 1 and divide the last dim of act ({k}), got {units}")


# No Triton kernel for this family (the reduction is memory-trivial): the C++ kernels, then
# the reference. The shared rule of kdfast.ops._backend.resolve applies: backend="triton"
# raises ValueError, KDFAST_BACKEND=triton falls back to what "auto" picks.
_PREFERENCE = {"cuda": ("cuda", "reference"), "cpu": ("cpu", "reference")}


def resolve(backend: str, device: torch.device) -> str:
    """The backend unit_taylor runs on ``device`` ('cpu', 'cuda' or 'reference')."""
    return _backend.resolve(backend, device, _PREFERENCE, family="unit_taylor")


def unit_taylor(act: torch.Tensor, grad: torch.Tensor, units: int | None = None,
                backend: str = "auto") -> torch.Tensor:
    """Per-unit sums of ``act * grad`` ([units]); ``units`` defaults to the last dim."""
    if units is None and isinstance(act, torch.Tensor) and act.dim() >= 1:
        units = act.shape[-1]
    check(act, grad, units)
    if resolve(backend, act.device) == "reference":
        return _reference(act, grad, units)
    return torch.ops.kdfast.unit_taylor(act, grad, units)
