"""Loads kdfast's compiled extensions and records why one is missing.

Importing an extension registers its ops (``torch.ops.kdfast.*``) with the dispatcher.
A missing or broken extension is never an import error: the backend is just absent and
:func:`kdfast.info` says why.
"""
from __future__ import annotations

import importlib
import os

import torch

_modules: dict[str, object] = {}
_missing: dict[str, str] = {}


def _load(backend: str, module: str) -> None:
    try:
        _modules[backend] = importlib.import_module(module)
    except Exception as exc:  # ImportError, or an undefined symbol from an ABI mismatch
        _missing[backend] = f"{module} could not be imported: {exc}"


_load("cpu", "kdfast._C")
if torch.cuda.is_available():
    _load("cuda", "kdfast._cuda")
elif torch.version.cuda is None:
    _missing["cuda"] = f"torch {torch.__version__} was built without CUDA"
else:
    _missing["cuda"] = "no CUDA device is visible"

try:
    import triton  # noqa: F401

    _triton_version = triton.__version__
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        _missing["triton"] = (
            f"triton {_triton_version} is installed but there is no CUDA device "
            "(set TRITON_INTERPRET=1 to run the Triton kernels on the CPU interpreter)"
        )
except Exception as exc:
    _triton_version = None
    _missing["triton"] = f"triton is not importable: {exc}"


def has(backend: str) -> bool:
    """Whether ``backend`` ("cpu", "cuda", "triton", "reference") can run here."""
    if backend == "reference":
        return True
    if backend == "triton":
        return "triton" not in _missing
    return backend in _modules


def has_op(name: str) -> bool:
    """Whether ``torch.ops.kdfast.<name>`` is defined (its schema lives in kdfast._C)."""
    return "cpu" in _modules and hasattr(torch.ops.kdfast, name)


def why_missing(backend: str) -> str | None:
    return _missing.get(backend)


def module(backend: str):
    return _modules.get(backend)


def triton_version() -> str | None:
    return _triton_version
