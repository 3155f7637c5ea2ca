"""The option checks of the distill package (recipes, TrainConfig, loss objects): each raises
a ValueError naming the option and what was expected."""
from __future__ import annotations

import math

from kdfast.ops._checks import choice as check_choice  # noqa: F401 (one implementation)


def check_positive_int(name: str, value, *, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_probability(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def check_positive(name: str, value) -> None:
    """A finite number > 0 (a temperature, a learning rate); NaN and inf are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
