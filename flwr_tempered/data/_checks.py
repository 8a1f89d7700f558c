"""Argument checks shared by the loaders and partitioners, with messages naming the value."""

from __future__ import annotations

import numbers


def check_seed(seed: object) -> int:
    """``seed`` as a Python ``int`` in ``0 .. 2**32 - 1`` (what numpy and scikit-learn take)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must lie in 0 .. 2**32 - 1, got {seed}")
    return int(seed)


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as a Python ``int`` that is at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
