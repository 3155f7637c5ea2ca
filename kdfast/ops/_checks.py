"""Argument checks shared by the op families: clear errors before any kernel runs."""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def tensor(name: str, value, *, float_only: bool = True) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if float_only and value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float32, bfloat16, float16 or float64), "
            f"got dtype {value.dtype}"
        )
    return value


def same(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, *, shape=True) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} has dtype {a.dtype} but {name_b} has dtype {b.dtype}")
    if shape and a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def positive_finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


# Temperatures kdfast's kernels handle exactly in float32: 1/T and T^2 stay finite there.
TEMPERATURE_RANGE = (1e-30, 1e15)


def temperature(value, name: str = "temperature") -> float:
    """A finite temperature in TEMPERATURE_RANGE (ValueError/TypeError naming it otherwise)."""
    value = positive_finite(name, value)
    lo, hi = TEMPERATURE_RANGE
    if not lo <= value <= hi:
        raise ValueError(f"{name} must lie in [{lo:g}, {hi:g}], got {value!r}")
    return value


def integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return value


def flag(name: str, value) -> bool:
    """A switch must be a bool: a string such as "no" would otherwise count as True."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def row_mask(name: str, mask, like: torch.Tensor, leading_shape) -> torch.Tensor | None:
    """A bool mask over the leading dims of ``like`` (None means every row counts)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool, got {mask.dtype}")
    if tuple(mask.shape) != tuple(leading_shape):
        raise ValueError(f"{name} must have shape {tuple(leading_shape)}, got {tuple(mask.shape)}")
    if mask.device != like.device:
        raise ValueError(f"{name} is on {mask.device} but the logits are on {like.device}")
    return mask


def row_lengths(name: str, lengths: torch.Tensor, rows: str, like: torch.Tensor, T: int) -> int:
    """Checks a [B] integer tensor of row lengths in [1, T] for the [B, T, ...] input ``like``
    (named ``rows``); returns the shortest length. One small host sync (the range)."""
    B = like.shape[0] if like.dim() > 1 else 1
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {lengths.dtype}")
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"{name} must have shape ({B},) (one length per row of {rows}), got "
                         f"{tuple(lengths.shape)}")
    if lengths.device.type != "cpu" and lengths.device != like.device:
        raise ValueError(f"{name} is on {lengths.device} but {rows} is on {like.device}")
    lo, hi = lengths.aminmax()
    lo, hi = int(lo), int(hi)  # one small sync, before any kernel
    if lo < 1 or hi > T:
        raise ValueError(f"{name} must lie in [1, T={T}], got values in [{lo}, {hi}]")
    return lo
