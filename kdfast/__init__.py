"""kdfast: fast distillation of BERT into small students.

* :mod:`kdfast.losses` -- fused distillation losses for your own training loop
* :mod:`kdfast.nn`     -- a fast bidirectional LSTM and student networks
* :mod:`kdfast.etd`    -- Extract-then-Distill: importance scoring and extraction
* :mod:`kdfast.distill` -- recipes and the training loop
"""
from __future__ import annotations

import platform

import torch

from kdfast import _ext

__version__ = "0.1.0"


def info() -> dict:
    """Versions, and which backends are present here (and why one is absent)."""
    backends = {}
    for name in ("cpu", "cuda", "triton", "reference"):
        backends[name] = {"present": _ext.has(name), "why_absent": _ext.why_missing(name)}
    c = _ext.module("cpu")
    return {
        "kdfast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _ext.triton_version(),
        "cpu_isa": c.cpu_isa() if c is not None else None,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "backends": backends,
    }


# Every op family (fake + autograd formulas for every torch.ops.kdfast op), then the public
# losses API; imported last: they need _ext.
from kdfast import ops  # noqa: E402,F401
from kdfast import losses  # noqa: E402,F401
