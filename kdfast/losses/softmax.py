"""Logit-level distillation losses: Hinton KL, TinyBERT soft cross-entropy, Tang logit MSE,
and the combined hard-label + soft-target loss, all on one fused kernel family.

Every function takes logits of any leading shape ([N, V] or [B, L, V]) in float32, bfloat16,
float16 (or float64), accumulates in float32 (float64 for float64) and returns a float32
loss; the student gradient comes back in the input dtype, computed in the forward pass.
``mask`` (bool, shape = logits.shape[:-1]) selects the rows that count.
"""
from __future__ import annotations

import torch
from torch import nn

from kdfast.ops import _checks
from kdfast.ops.softmax_kd import KINDS, kd_loss

REDUCTIONS = ("batchmean", "sum", "mean", "none")


def _validate(student, teacher, mask, temperature):
    _checks.tensor("student_logits", student)
    _checks.tensor("teacher_logits", teacher)
    _checks.same("student_logits", student, "teacher_logits", teacher)
    if student.dim() < 1 or student.shape[-1] == 0:
        raise ValueError(
            f"student_logits must have a non-empty last (class) dimension, got {tuple(student.shape)}"
        )
    _checks.row_mask("mask", mask, student, student.shape[:-1])
    return _checks.temperature(temperature)


def _row_weights(mask, n_rows, classes, reduction, coef, dtype, device):
    """Per-row weights folding mask, reduction and coefficient (no host sync)."""
    counted = (torch.ones(n_rows, dtype=dtype, device=device) if mask is None
               else mask.reshape(-1).to(dtype))
    if reduction == "batchmean":
        return counted * (coef / counted.sum().clamp_min(1))
    if reduction == "mean":
        return counted * (coef / (counted.sum().clamp_min(1) * classes))
    return counted * coef


def _softmax_family(student, teacher, *, kind, temperature, reduction, mask, coef, labels=None,
                    alpha=0.0, ignore_index=-100, backend="auto"):
    lead, classes = student.shape[:-1], student.shape[-1]
    s, t = student.reshape(-1, classes), teacher.reshape(-1, classes)
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    soft_w = _row_weights(mask, s.shape[0], classes, reduction, coef * (1.0 - alpha), acc, s.device)
    hard_w = flat_labels = None
    if labels is not None:
        flat_labels = labels.reshape(-1).long()  # int8/uint8 would wrap ignore_index, classes
        valid = flat_labels != ignore_index
        if mask is not None:
            valid = valid & mask.reshape(-1)
        # on the device without a host sync (CUDA, or any tensor under torch.compile, where a
        # data-dependent branch would break the graph); eagerly on the CPU with the bad label
        if s.device.type == "cuda" or torch.compiler.is_compiling():
            in_range = ((flat_labels >= 0) & (flat_labels < classes)) | ~valid
            torch._assert_async(in_range.all(), "labels must lie in [0, num_classes) or be ignore_index")
        elif flat_labels.numel() and bool((((flat_labels < 0) | (flat_labels >= classes)) & valid).any()):
            bad = flat_labels[((flat_labels < 0) | (flat_labels >= classes)) & valid][0].item()
            raise ValueError(f"labels must lie in [0, {classes}) or equal ignore_index={ignore_index}, got {bad}")
        valid_f = valid.to(acc)
        hard_w = valid_f * alpha if reduction == "none" else valid_f * (alpha / valid_f.sum().clamp_min(1))
        flat_labels = torch.where(valid, flat_labels, torch.zeros_like(flat_labels))
    rows = kd_loss(s, t, flat_labels, soft_w, hard_w, kind, temperature, backend)
    out = rows.reshape(lead) if reduction == "none" else rows.sum()
    return out if student.dtype == torch.float64 else out.float()


def kl_div(student_logits, teacher_logits, *, temperature=1.0, reduction="batchmean", mask=None,
           scale_by_temperature_squared=True, backend="auto"):
    """Hinton KD: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` over the last dim.

    reduction: ``batchmean`` (sum over classes, mean over counted rows), ``sum``, ``mean``
    (per element) or ``none`` (per row, shape = logits.shape[:-1]).
    """
    t = _validate(student_logits, teacher_logits, mask, temperature)
    _checks.choice("reduction", reduction, REDUCTIONS)
    coef = t * t if _checks.flag("scale_by_temperature_squared", scale_by_temperature_squared) \
        else 1.0
    return _softmax_family(student_logits, teacher_logits, kind=KINDS["kl"], temperature=t,
                           reduction=reduction, mask=mask, coef=coef, backend=backend)


def soft_cross_entropy(student_logits, teacher_logits, *, temperature=1.0, reduction="batchmean",
                       mask=None, scale_by_temperature_squared=False, tinybert_compat=False,
                       backend="auto"):
    """TinyBERT's prediction loss ``-sum softmax(teacher/T) * log_softmax(student/T)``.

    TinyBERT uses no T^2 factor, hence ``scale_by_temperature_squared=False`` by default.
    ``tinybert_compat=True`` reproduces the official code's ``.mean()`` over batch x classes
    (it overrides ``reduction``).
    """
    t = _validate(student_logits, teacher_logits, mask, temperature)
    _checks.choice("reduction", reduction, REDUCTIONS)
    if _checks.flag("tinybert_compat", tinybert_compat):
        reduction = "mean"
    coef = t * t if _checks.flag("scale_by_temperature_squared", scale_by_temperature_squared) \
        else 1.0
    return _softmax_family(student_logits, teacher_logits, kind=KINDS["soft_ce"], temperature=t,
                           reduction=reduction, mask=mask, coef=coef, backend=backend)


def logits_mse(student_logits, teacher_logits, *, reduction="mean", mask=None, backend="auto"):
    """Tang et al.'s ``||z_T - z_S||^2`` on pre-softmax logits; ``mean`` is per element
    (``torch.nn.MSELoss``), ``batchmean`` sums over classes and averages over rows."""
    _validate(student_logits, teacher_logits, mask, 1.0)
    _checks.choice("reduction", reduction, REDUCTIONS)
    return _softmax_family(student_logits, teacher_logits, kind=KINDS["mse"], temperature=1.0,
                           reduction=reduction, mask=mask, coef=1.0, backend=backend)


_DEFAULT_REDUCTION = {"kl": "batchmean", "soft_ce": "batchmean", "mse": "mean"}


def distillation_loss(student_logits, teacher_logits, labels=None, *, kind="kl", alpha=0.5,
                      temperature=1.0, ignore_index=-100, mask=None, reduction=None,
                      backend="auto"):
    """``alpha * CE(student, labels) + (1 - alpha) * soft`` in one fused pass.

    The soft term is ``kind``: ``kl`` (with T^2), ``soft_ce`` or ``mse``, each with its
    default reduction unless ``reduction`` is given; the hard term is the usual mean
    cross-entropy (temperature 1) over rows whose label is not ``ignore_index``. Without
    labels the loss is the soft term alone (alpha is ignored).
    """
    _checks.choice("kind", kind, tuple(KINDS))
    t = _validate(student_logits, teacher_logits, mask, temperature)
    reduction = _DEFAULT_REDUCTION[kind] if reduction is None else reduction
    _checks.choice("reduction", reduction, REDUCTIONS)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    _checks.integer("ignore_index", ignore_index)
    if labels is not None:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be an integer torch.Tensor, got {type(labels).__name__}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
        if tuple(labels.shape) != tuple(student_logits.shape[:-1]):
            raise ValueError(
                f"labels must have shape {tuple(student_logits.shape[:-1])}, got {tuple(labels.shape)}"
            )
        if labels.device != student_logits.device:
            raise ValueError(f"labels is on {labels.device} but the logits are on {student_logits.device}")
    else:
        alpha = 0.0
    coef = t * t if kind == "kl" else 1.0
    return _softmax_family(student_logits, teacher_logits, kind=KINDS[kind], temperature=t,
                           reduction=reduction, mask=mask, coef=coef, labels=labels,
                           alpha=float(alpha), ignore_index=ignore_index, backend=backend)


class _LossModule(nn.Module):
    _fn = None

    def __init__(self, **options):
        super().__init__()
        self.options = options

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class KLDivLoss(_LossModule):
    """Module form of :func:`kl_div`: ``KLDivLoss(temperature=2.0)(student, teacher, mask=None)``."""

    def forward(self, student_logits, teacher_logits, mask=None):
        return kl_div(student_logits, teacher_logits, mask=mask, **self.options)


class SoftCrossEntropyLoss(_LossModule):
    """Module form of :func:`soft_cross_entropy`."""

    def forward(self, student_logits, teacher_logits, mask=None):
        return soft_cross_entropy(student_logits, teacher_logits, mask=mask, **self.options)


class LogitsMSELoss(_LossModule):
    """Module form of :func:`logits_mse`."""

    def forward(self, student_logits, teacher_logits, mask=None):
        return logits_mse(student_logits, teacher_logits, mask=mask, **self.options)


class DistillationLoss(_LossModule):
    """Module form of :func:`distillation_loss`."""

    def forward(self, student_logits, teacher_logits, labels=None, mask=None):
        return distillation_loss(student_logits, teacher_logits, labels, mask=mask, **self.options)
