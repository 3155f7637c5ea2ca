"""ONE registration for every fused-gradient op family (softmax_kd, attention, value_relation,
relation).

A fused-gradient op has the schema ``op(student, teacher, ..., compute_grad) -> (loss, grad)``:
``student`` is a tensor or a list of tensors, ``grad`` the matching gradient buffer(s) that
the kernel writes in the same pass as the loss when ``compute_grad`` is true (``d sum(loss) /
d student`` for every entry of ``loss`` weighted 1). :func:`register` gives such an op its fake
implementation and its autograd formula, with one backward policy for all families:

* **first-order backward, eager**: the buffer the forward wrote is the gradient; backward
  only scales it by the incoming gradient (``weight(grad_loss, i)`` broadcast to buffer i). It
  is never modified in place: the scaled gradient is a new tensor, except where the incoming
  gradient is known to be all ones without a device sync (CPU tensors), where the buffer
  itself is handed to autograd (no copy, no pass) and the node remembers that it gave it away;
* **repeated backward** (``retain_graph=True``): a node whose buffer was handed out recomputes
  it with the same fused kernel from the saved inputs (bit-identical), so the second, third,
  ... backward give the same numbers as the first;
* **higher order** (backward runs with grad mode on, i.e. ``create_graph=True``): the gradient
  is the autograd gradient of the reference formula (kdfast.reference) on the saved inputs,
  built with ``create_graph=True``, so double backward is exact, never a silently dropped
  second-order term;
* **tracing** (torch.compile, fake tensors): plain ``buffer * weight``, functional.

No host sync on device tensors anywhere: the all-ones test runs only on CPU tensors. The
inputs are saved for the last two cases (references, not copies).
"""
from __future__ import annotations

import typing
from typing import Callable

import torch

from kdfast import _ext


def tracing(x: torch.Tensor) -> bool:
    """Whether ``x`` belongs to a trace (torch.compile, fake or functional tensors) rather than
    eager execution: the single test every fused family uses."""
    return torch.compiler.is_compiling() or type(x) is not torch.Tensor


def _all_ones_on_cpu(x: torch.Tensor) -> bool:
    """Whether ``x`` is all ones, checked only where that costs no device sync."""
    return x.device.type == "cpu" and bool((x == 1).all())


class _Rule:
    """The autograd formula of one fused-gradient op (see the module docstring)."""

    def __init__(self, name: str, reference: Callable, weight: Callable):
        self.name = name
        self.reference = reference  # (*inputs without compute_grad) -> loss, the op's shape
        self.weight = weight  # (grad_loss, i, buffer) -> multiplier broadcastable to buffer i
        self.op = None  # set by register: the op itself, for recomputing a given-away buffer

    def setup_context(self, ctx, inputs, output):
        grad = output[1]
        grads = list(grad) if isinstance(grad, (list, tuple)) else [grad]
        ctx.mark_non_differentiable(*grads)
        # No zero "gradient" for the (non-differentiable) gradient outputs: a full write each.
        ctx.set_materialize_grads(False)
        ctx.is_list = isinstance(grad, (list, tuple))
        ctx.n_grads = len(grads)
        ctx.compute_grad = bool(inputs[-1])
        ctx.given_away = False
        tensors, layout = list(grads), []
        for x in inputs:
            if isinstance(x, torch.Tensor):
                layout.append(("t", len(tensors)))
                tensors.append(x)
            elif isinstance(x, (list, tuple)) and x and all(isinstance(v, torch.Tensor) for v in x):
                layout.append(("l", len(tensors), len(x)))
                tensors.extend(x)
            else:
                layout.append(("v", x))
        ctx.layout = layout
        ctx.save_for_backward(*tensors)

    @staticmethod
    def _inputs(ctx, saved):
        out = []
        for entry in ctx.layout:
            if entry[0] == "t":
                out.append(saved[entry[1]])
            elif entry[0] == "l":
                out.append(list(saved[entry[1]:entry[1] + entry[2]]))
            else:
                out.append(entry[1])
        return out

    def backward(self, ctx, grad_loss, _grad_of_grads):
        # no gradient for anything but the student (a list of Nones for a list input)
        nones = [[None] * e[2] if e[0] == "l" else None for e in ctx.layout]
        needs = ctx.needs_input_grad[0]
        if isinstance(needs, (list, tuple)):  # a list of student tensors
            needs = any(needs)
        if grad_loss is None or not needs:
            return tuple(nones)
        if not ctx.compute_grad:
            raise RuntimeError(f"kdfast {self.name}: backward called but the forward ran "
                               "without compute_grad=True (it wrote no gradient)")
        saved = ctx.saved_tensors
        grads = list(saved[:ctx.n_grads])
        if tracing(grad_loss):
            out = [g * self.weight(grad_loss, i, g).to(g.dtype) for i, g in enumerate(grads)]
        elif torch.is_grad_enabled():
            out = self._differentiate_reference(ctx, saved, grad_loss)
        else:
            if ctx.given_away:  # an earlier backward handed the buffer out: compute it again
                inputs = self._inputs(ctx, saved)
                with torch.no_grad():
                    fresh = self.op(*inputs[:-1], True)[1]
                fresh = list(fresh) if ctx.is_list else [fresh]
                # fresh buffers belong to nobody: scaling them in place is safe
                out = [g.mul_(self.weight(grad_loss, i, g).to(g.dtype)) for i, g in enumerate(fresh)]
            elif _all_ones_on_cpu(grad_loss):
                # Hand the buffers to autograd (it adopts them without a copy). ``.data`` gives
                # them their own version counter, so autograd accumulating into them later
                # cannot trip the saved-tensor check; the node never reads them again.
                ctx.given_away = True
                out = [g.data for g in grads]
            else:
                out = [g * self.weight(grad_loss, i, g).to(g.dtype) for i, g in enumerate(grads)]
        nones[0] = out if ctx.is_list else out[0]
        return tuple(nones)

    def _differentiate_reference(self, ctx, saved, grad_loss):
        inputs = self._inputs(ctx, saved)
        with torch.enable_grad():
            # Fresh aliases: the gradient must be the partial derivative w.r.t. each student
            # input even when one input is computed from another (layers of the same tensor).
            student = [x.view_as(x) for x in (inputs[0] if ctx.is_list else [inputs[0]])]
            inputs[0] = student if ctx.is_list else student[0]
            loss = self.reference(*inputs[:-1])
            wanted = [s for s in student if s.requires_grad]  # a list may mix both kinds
            grads = iter(torch.autograd.grad(loss, wanted, grad_loss.reshape(loss.shape),
                                             create_graph=True, allow_unused=True))
        out = [next(grads) if s.requires_grad else None for s in student]
        return [torch.zeros_like(s) if g is None else g for s, g in zip(student, out)]


def register(op, *, fake: Callable, reference: Callable, weight: Callable):
    """Gives the fused-gradient ``op`` its fake implementation and autograd formula.

    ``op`` is a compiled op's qualified name (``"kdfast::kd_loss"``; nothing is registered,
    and None is returned, when kdfast._C does not define it) or a
    ``torch.library.custom_op`` object. ``reference(*inputs_without_compute_grad)`` returns
    the op's loss; ``weight(grad_loss, i, buffer)`` the incoming-gradient factor for gradient
    buffer ``i``. Returns the callable op.
    """
    if isinstance(op, str):
        name = op.split("::", 1)[1]
        if not _ext.has_op(name):
            return None
        torch.library.register_fake(op)(fake)
        callable_op = getattr(torch.ops.kdfast, name)
    else:
        name = op._name.split("::", 1)[-1] if hasattr(op, "_name") else str(op)
        op.register_fake(fake)
        callable_op = op
    rule = _Rule(name, reference, weight)
    rule.op = callable_op
    if isinstance(op, str):
        torch.library.register_autograd(op, rule.backward, setup_context=rule.setup_context)
    else:
        op.register_autograd(rule.backward, setup_context=rule.setup_context)
    return callable_op


def custom_op(name: str, impl: Callable, *, fake: Callable, reference: Callable, weight: Callable):
    """A Python-implemented fused-gradient op ``kdfast::<name>`` (e.g. the Triton kernels),
    registered through :func:`register`."""
    # torch < 2.5 infers the schema from the annotations as written: evaluate them first
    # (modules use `from __future__ import annotations`; typing.List/Optional/Tuple, which
    # torch 2.4 accepts, where the builtin list[...] and X | None forms are not)
    impl.__annotations__ = typing.get_type_hints(impl)
    op = torch.library.custom_op(f"kdfast::{name}", mutates_args=())(impl)
    return register(op, fake=fake, reference=reference, weight=weight)
