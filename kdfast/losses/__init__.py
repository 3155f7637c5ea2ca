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
from kdfast.losses.intermediate import (
    AttentionKLLoss,
    AttentionMSELoss,
    HiddenMSELoss,
    Projection,
    SentenceApproxLoss,
    ValueRelationKLLoss,
    attention_kl,
    attention_mse,
    hidden_mse,
    layer_map,
    pool,
    sentence_approx,
    value_relation_kl,
)

__all__ = [
    "DistillationLoss", "KLDivLoss", "LogitsMSELoss", "SoftCrossEntropyLoss",
    "distillation_loss", "kl_div", "logits_mse", "soft_cross_entropy",
    "AttentionKLLoss", "AttentionMSELoss", "HiddenMSELoss", "Projection", "SentenceApproxLoss",
    "ValueRelationKLLoss", "attention_kl", "attention_mse", "hidden_mse", "layer_map", "pool",
    "sentence_approx", "value_relation_kl",
]
