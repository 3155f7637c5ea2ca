"""Projection-level relation losses (attention KL / MSE from Q and K, MiniLMv2 relations):
registration, backend choice.

``relation_loss(student, teacher, mask, scale, kind, backend)`` returns the scalar loss for
the student pair ``[A_s, B_s]`` and teacher pair ``[A_t, B_t]`` (contiguous [B, R, L, d]; see
kdfast.reference.relation for the definition). The kernels never materialise an L x L map:

* ``torch.ops.kdfast.relation_loss`` (C++, CPU; csrc/cpu/relation.cpp): flash-style tiles,
  parallel over (B*R, query blocks) for the loss and dA, then over (B*R, key blocks) for dB;
  with at least two planes per thread, one pass per plane that accumulates dB as well;
* ``kdfast::relation_loss_triton`` (kdfast/triton/relation.py), the same two-kernel scheme;
* the same op on CUDA tensors (kdfast._cuda, csrc/cuda/relation.cu): the two-kernel scheme in
  SIMT form. ``auto`` picks Triton first on CUDA tensors until the GPU measurements decide
  (the CUDA kernel has only been compiled, never run, so far).

Both compiled ops compute the student gradient in the forward pass when asked
(``compute_grad``) and share the fused-gradient autograd rule of kdfast.ops._fused. When the
C++ op is absent (a kdfast._C built before it existed), ``auto`` on CPU falls back to the
reference (which materialises the maps) and an explicit ``backend="cpu"`` raises. A teacher
that requires grad also takes the reference path.
"""
from __future__ import annotations

from typing import List, Optional, Tuple  # torch 2.4 takes these forms in a custom_op

import torch

from kdfast import _ext
from kdfast.ops import _backend, _fused
from kdfast.reference.relation import relation_loss as _reference_loss

FAMILY = "the relation losses (attention from Q/K, value relations)"
OP = "relation_loss"
PREFERENCE = {"cpu": ("cpu", "reference"), "cuda": ("triton", "cuda", "reference")}

# Shape limits of the kernels (checked in kdfast.losses.relation before any kernel runs).
MAX_HEAD_DIM = 256
MAX_LENGTH = 1 << 16


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake(student, teacher, mask, scale, kind, compute_grad):
    loss = student[0].new_empty(1, dtype=_acc(student[0].dtype))
    grads = ([torch.empty_like(s, memory_format=torch.contiguous_format) for s in student]
             if compute_grad else [])
    return loss, grads


def _reference(student, teacher, mask, scale, kind):
    return _reference_loss(student, teacher, mask, scale, kind)


def _weight(grad_loss, i, grad):
    return grad_loss.reshape(())


_RULE = dict(fake=_fake, reference=_reference, weight=_weight)
_compiled = None


def compiled_op():
    """``torch.ops.kdfast.relation_loss`` with its fake + autograd registered, or None when
    kdfast._C does not define it. Registration happens once, on first sight of the op (it may
    appear after import, e.g. from a development build loaded with torch.ops.load_library)."""
    global _compiled
    if _compiled is None and _ext.has_op(OP):
        _compiled = _fused.register(f"kdfast::{OP}", **_RULE)
    return _compiled


compiled_op()


def use_dev_build(path: str):
    """Development only: load a private build of csrc/cpu/relation.cpp whose op is renamed
    ``kdfast::relation_loss_dev`` (so it can sit beside an installed kdfast._C that already
    defines ``relation_loss``) and make it the ``cpu`` backend of this process."""
    global _compiled
    torch.ops.load_library(path)
    _compiled = _fused.register("kdfast::relation_loss_dev", **_RULE)
    return _compiled


def _triton_impl(student: List[torch.Tensor], teacher: List[torch.Tensor],
                 mask: Optional[torch.Tensor], scale: torch.Tensor, kind: int,
                 compute_grad: bool) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    from kdfast.triton.relation import relation_loss

    return relation_loss(student, teacher, mask, scale, kind, compute_grad)


relation_loss_triton = _fused.custom_op("relation_loss_triton", _triton_impl, **_RULE)


def resolve(backend: str, device: torch.device) -> str:
    """The backend that will run (ValueError for an explicit one that cannot)."""
    name = _backend.resolve(backend, device, PREFERENCE, family=FAMILY)
    if name in ("cpu", "cuda") and compiled_op() is None:
        if backend == name:
            raise ValueError(
                f"backend {name!r} for the relation losses needs torch.ops.kdfast.relation_loss, "
                "which this kdfast._C was built without (rebuild: pip install -e .)")
        name = "reference"
    return name


def relation_loss(student, teacher, mask, scale, kind: int, backend: str = "auto") -> torch.Tensor:
    """Scalar loss for validated, contiguous [B, R, L, d] pairs (see the module docstring)."""
    name = resolve(backend, student[0].device)
    student, teacher = list(student), list(teacher)
    if name == "reference" or any(t.requires_grad for t in teacher):
        return _reference(student, teacher, mask, scale, kind)[0]
    compute_grad = torch.is_grad_enabled() and any(s.requires_grad for s in student)
    op = compiled_op() if name in ("cpu", "cuda") else relation_loss_triton
    loss, _ = op(student, teacher, mask, scale, int(kind), compute_grad)
    return loss[0]
