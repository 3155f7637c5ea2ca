"""Reference (the spec) of ``torch.ops.kdfast.unit_taylor``, the reduction inside ETD
importance scoring; the whole head-mask + Taylor procedure that the scores must reproduce is
:func:`kdfast.etd.headmask.importance_reference`."""
from __future__ import annotations

import torch


def unit_taylor(act: torch.Tensor, grad: torch.Tensor, units: int) -> torch.Tensor:
    acc = torch.float64 if act.dtype == torch.float64 else torch.float32
    k = act.shape[-1]
    cols = (act.to(acc) * grad.to(acc)).reshape(-1, k).sum(0)
    return cols.reshape(units, k // units).sum(-1)
