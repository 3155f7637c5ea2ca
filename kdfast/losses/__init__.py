"""Distillation losses for your own training loop (functional and ``nn.Module`` forms)."""
from kdfast.losses.softmax import (
    DistillationLoss,
    KLDivLoss,
    LogitsMSELoss,
    SoftCrossEntropyLoss,
    distillation_loss,
    kl_div,
    logits_mse,
    soft_cross_entropy,
)

__all__ = [
    "DistillationLoss", "KLDivLoss", "LogitsMSELoss", "SoftCrossEntropyLoss",
    "distillation_loss", "kl_div", "logits_mse", "soft_cross_entropy",
]
