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
from kdfast.losses.relation import attention_kl_qk, attention_mse_qk, relation_kl

__all__ = [
    "DistillationLoss", "KLDivLoss", "LogitsMSELoss", "SoftCrossEntropyLoss",
    "distillation_loss", "kl_div", "logits_mse", "soft_cross_entropy",
    "AttentionKLLoss", "AttentionMSELoss", "HiddenMSELoss", "Projection", "SentenceApproxLoss",
    "ValueRelationKLLoss", "attention_kl", "attention_mse", "hidden_mse", "layer_map", "pool",
    "sentence_approx", "value_relation_kl",
    "attention_kl_qk", "attention_mse_qk", "relation_kl",
]
