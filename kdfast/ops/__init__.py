"""kdfast's op families: registration (fake + autograd formulas), argument checks and
backend choice, one module per family.

Importing this package imports EVERY family, so that each ``torch.ops.kdfast.*`` op has its
fake implementation and autograd formula as soon as ``import kdfast`` returns (not only after
the module that happens to use it is imported). The fused-gradient families share one
registration helper (:mod:`kdfast.ops._fused`) and every family shares one backend rule
(:mod:`kdfast.ops._backend`).
"""
from kdfast.ops import (  # noqa: F401
    attention,
    bilstm,
    importance,
    relation,
    softmax_kd,
    value_relation,
)

__all__ = ["attention", "bilstm", "importance", "relation", "softmax_kd", "value_relation"]
