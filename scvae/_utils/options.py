"""Checks of plain option values: integers, seeds, numbers, flags and key names.

The public functions other than ``fit`` (whose options are checked by ``FitSettings``) call
these at their top, before any data is read, so that a wrong value fails at once with a
message naming the option and the value, instead of being truncated (``2.5`` read as ``2``),
read as an integer (``True`` as ``1``), read as a flag (``"no"`` as true) or failing deep
inside torch or numpy. A wrong type raises ``TypeError``, a value out of range ``ValueError``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["check_flag", "check_int", "check_key", "check_number", "check_seed"]

# torch.manual_seed takes seeds below 2**64; numpy's generators take non-negative ones.
_SEED_LIMIT = 2**64


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool, not a float) >= ``minimum``.

    Examples
    --------
    >>> check_int("n_samples", 5)
    5
    >>> check_int("n_samples", 2.5)
    Traceback (most recent call last):
    ...
    TypeError: n_samples must be an integer, got float 2.5
    >>> check_int("n_samples", 0)
    Traceback (most recent call last):
    ...
    ValueError: n_samples must be a positive integer, got 0
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {_kind(value)}")
    if value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed: an integer in ``[0, 2**64)`` (what both numpy and torch accept)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {_kind(value)}")
    if not 0 <= value < _SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {value!r}")
    return int(value)


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a bool) in the range.

    Examples
    --------
    >>> check_number("library_size", 1e4, low=0, open_low=True)
    10000.0
    >>> check_number("library_size", float("nan"), low=0, open_low=True)
    Traceback (most recent call last):
    ...
    ValueError: library_size must be a finite number > 0, got nan
    """
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | float | np.integer | np.floating
    ):
        raise TypeError(f"{name} must be a number, got {_kind(value)}")
    parts = []
    if low is not None:
        parts.append(f"{'>' if open_low else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if open_high else '<='} {high:g}")
    below = low is not None and (value <= low if open_low else value < low)
    above = high is not None and (value >= high if open_high else value > high)
    if not math.isfinite(value) or below or above:
        wanted = " and ".join(parts)
        raise ValueError(
            f"{name} must be a finite number{' ' + wanted if wanted else ''}, got {value!r}"
        )
    return float(value)


def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (a string like ``"no"`` is not)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {_kind(value)}")
    return bool(value)


def check_key(name: str, value: Any) -> str:
    """A name scvae writes results under: a non-empty string without ``/`` (h5ad files
    cannot store such keys)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a non-empty string, got {_kind(value)}")
    if not value:
        raise ValueError(f"{name} must be a non-empty string, got ''")
    if "/" in value:
        raise ValueError(
            f"{name}={value!r} holds '/': h5ad files cannot store such keys; choose a name "
            "without it"
        )
    return value
