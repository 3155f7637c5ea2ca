"""The integer kind codes of the fused loss families: the ONE Python place that defines them.

The compiled kernels take the kind as an ``int``; the C++ side keeps matching enums
(``KdKind`` in csrc/include/kdfast/softmax_kd_row.h, ``AttnKind`` in attention_loss_row.h),
and tests/test_hostile_losses.py checks that both sides agree. The reference lives here
because it is the spec and imports nothing from the implementation.
"""
from __future__ import annotations

# kdfast::kd_loss (softmax distillation family)
KD_KL, KD_SOFT_CE, KD_MSE = 0, 1, 2
KD_KINDS = {"kl": KD_KL, "soft_ce": KD_SOFT_CE, "mse": KD_MSE}

# kdfast::attention_loss (attention-map family; value relations use ATTN_KL)
ATTN_TINYBERT_MSE, ATTN_MSE, ATTN_KL = 0, 1, 2
ATTN_KINDS = {"tinybert": ATTN_TINYBERT_MSE, "mse": ATTN_MSE, "kl": ATTN_KL}
