"""Backend choice shared by every op family.

Backends: ``cuda`` (C++/CUDA), ``triton``, ``cpu`` (C++), ``reference`` (plain PyTorch).
``backend="auto"`` takes the first backend of the family's preference list that is present
for the tensor's device; ``KDFAST_BACKEND`` forces one for every call that says ``auto``.
"""
from __future__ import annotations

import os

import torch

from kdfast import _ext

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")

# Order of preference for backend="auto". Keep in step with the benchmark results in
# benchmarks/results/: a family may override this with its own measured order.
DEFAULT_PREFERENCE = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}


def resolve(backend: str, device: torch.device, preference: dict | None = None) -> str:
    """Returns the concrete backend to run on ``device``; raises ValueError if it cannot run."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        forced = os.environ.get("KDFAST_BACKEND", "").strip()
        if forced:
            if forced not in BACKENDS:
                raise ValueError(f"KDFAST_BACKEND must be one of {BACKENDS}, got {forced!r}")
            backend = forced
    if backend == "auto":
        order = (preference or DEFAULT_PREFERENCE).get(device.type, ("reference",))
        return next(b for b in order if _ext.has(b))
    if not _ext.has(backend):
        raise ValueError(f"backend {backend!r} is not available: {_ext.why_missing(backend)}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, got tensors on {device}")
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"backend 'cuda' needs CUDA tensors, got tensors on {device}")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got {device}")
    return backend
