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


_FALLBACK = {"cpu": "using the reference backend", "cuda": "using triton or the reference backend"}
_REINSTALL = ("reinstall kdfast for this torch (from source: pip install --no-build-isolation "
              "<kdfast source dir>; or a kdfast wheel built with torch {running})")


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _build_mismatch(module: str) -> str | None:
    """Why ``module`` must not be loaded into the running torch, from the build record that
    setup.py writes (kdfast/_build_info.py); None when it may. libtorch's C++ ABI is not stable
    across minor versions, so a .so built for another torch major.minor is never dlopen'ed."""
    try:
        from kdfast import _build_info as b
    except ImportError:  # built before build records existed: let the import decide
        return None
    running = _major_minor(torch.__version__)
    if module not in b.EXTENSIONS:
        return f"{module} was not built ({b.CUDA_SKIPPED or 'not requested at build time'})"
    built = _major_minor(b.TORCH_VERSION)
    if built != running:
        return (f"{module} was built for torch {built} but torch {running} is running: "
                + _REINSTALL.format(running=running))
    abi = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    if b.CXX11_ABI != abi:
        return (f"{module} was built with _GLIBCXX_USE_CXX11_ABI={int(b.CXX11_ABI)} but the "
                f"running torch {torch.__version__} uses {int(abi)}: "
                + _REINSTALL.format(running=running))
    if module == "kdfast._cuda" and b.TORCH_CUDA and torch.version.cuda and (
            b.TORCH_CUDA.split(".")[0] != torch.version.cuda.split(".")[0]):
        return (f"{module} was built for CUDA {b.TORCH_CUDA} but torch {torch.__version__} uses "
                f"CUDA {torch.version.cuda}: " + _REINSTALL.format(running=running))
    return None


def _load(backend: str, module: str) -> None:
    why = _build_mismatch(module)
    if why is not None:
        _missing[backend] = f"{why} -- {_FALLBACK[backend]}"
        return
    try:
        _modules[backend] = importlib.import_module(module)
    except Exception as exc:  # ImportError, or OSError/undefined symbol from an ABI mismatch
        _missing[backend] = (f"{module} could not be loaded into torch {torch.__version__} "
                             f"({type(exc).__name__}: {exc}): "
                             + _REINSTALL.format(running=_major_minor(torch.__version__))
                             + f" -- {_FALLBACK[backend]}")


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
