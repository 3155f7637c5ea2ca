"""Backend choice shared by every op family: ONE rule.

Backends: ``cuda`` (C++/CUDA), ``triton``, ``cpu`` (C++), ``reference`` (plain PyTorch).
Each family declares its preference per device type (``preference``: device type -> ordered
backends); the backends it implements are the union of those lists (every family has
``reference``). Then:

* ``backend="auto"`` takes the first backend of the device's preference list that is present;
* ``KDFAST_BACKEND=<name>`` forces ``<name>`` for every call that says ``auto``, where the
  family implements it, it is present and it can run on the tensors' device; otherwise the
  call falls back to what ``auto`` picks (the family's next present backend in its
  preference order). A name that is not a backend at all raises ``ValueError``;
* an explicit ``backend=<name>`` argument that the family lacks, that is absent here, or
  that cannot run on the tensors' device raises ``ValueError``: an explicit request is never
  silently replaced.
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

# Backends a family with the default preference implements (triton runs on CPU tensors only
# under TRITON_INTERPRET=1, so it is not in the CPU preference but is still implemented).
_ALL = ("cuda", "triton", "cpu", "reference")


def implemented(preference: dict | None) -> tuple[str, ...]:
    """The backends a family with this preference table implements."""
    if preference is None:
        return _ALL
    names = {"reference"}
    for order in preference.values():
        names.update(order)
    return tuple(b for b in _ALL if b in names)


def _runs_here(backend: str, device: torch.device) -> str | None:
    """None if ``backend`` is present and can run on ``device``, else why not."""
    if not _ext.has(backend):
        return f"backend {backend!r} is not available: {_ext.why_missing(backend)}"
    if backend == "cpu" and device.type != "cpu":
        return f"backend 'cpu' needs CPU tensors, got tensors on {device}"
    if backend == "cuda" and device.type != "cuda":
        return f"backend 'cuda' needs CUDA tensors, got tensors on {device}"
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got {device}"
    return None


def resolve(backend: str, device: torch.device, preference: dict | None = None,
            family: str = "this op") -> str:
    """Returns the concrete backend to run on ``device``; raises ValueError if it cannot run."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    have = implemented(preference)
    if backend == "auto":
        forced = os.environ.get("KDFAST_BACKEND", "").strip()
        if forced:
            if forced not in BACKENDS:
                raise ValueError(f"KDFAST_BACKEND must be one of {BACKENDS}, got {forced!r}")
            if forced != "auto" and forced in have and _runs_here(forced, device) is None:
                return forced
        order = (preference or DEFAULT_PREFERENCE).get(device.type, ("reference",))
        return next((b for b in order if b in have and _runs_here(b, device) is None), "reference")
    if backend not in have:
        raise ValueError(f"{family} has no {backend!r} backend; it has {have}")
    why = _runs_here(backend, device)
    if why is not None:
        raise ValueError(why)
    return backend
