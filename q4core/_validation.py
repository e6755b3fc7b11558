"""Argument validation in one place (scikit-learn's ``utils/_param_validation.py`` is the model).

Each checker takes the value and the argument's name and returns the value normalised (a Python ``int`` for
numpy integers, a ``float`` for reals) or raises a ``TypeError`` / ``ValueError`` whose message names the
argument, says what it must be and shows what it got.  ``bool`` is never taken for a number.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["check_int", "check_real", "check_bool", "check_one_of", "check_int_list"]


def _is_int(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value: Any, name: str, *, min_value: int | None = None, max_value: int | None = None,
              allow_none: bool = False) -> int | None:
    """``value`` as an int in ``[min_value, max_value]`` (``None`` passes with ``allow_none``)."""
    if value is None and allow_none:
        return None
    bounds = _bounds_text(min_value, max_value)
    if not _is_int(value):
        raise ValueError(f"{name} must be an int{bounds}{' or None' if allow_none else ''}, got {value!r}")
    if (min_value is not None and value < min_value) or (max_value is not None and value > max_value):
        raise ValueError(f"{name} must be an int{bounds}, got {value!r}")
    return int(value)


def check_real(value: Any, name: str, *, min_value: float | None = None, max_value: float | None = None,
               positive: bool = False, finite: bool = True, allow_none: bool = False) -> float | None:
    """``value`` as a float: finite unless ``finite=False``, ``> 0`` with ``positive``, within the bounds."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    what = ("a finite " if finite else "a ") + ("positive " if positive else "") + "number" + \
        _bounds_text(min_value, max_value)
    if (finite and not math.isfinite(v)) or math.isnan(v) or (positive and not v > 0) \
            or (min_value is not None and v < min_value) or (max_value is not None and v > max_value):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return v


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a bool (``True``/``False`` or numpy bools only: ``"no"`` is not false)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_one_of(value: Any, name: str, options: Iterable[Any]) -> Any:
    """``value`` if it is one of ``options``; the error lists them."""
    options = tuple(options)
    if isinstance(value, (bool, np.bool_)) and not any(isinstance(o, bool) for o in options):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def check_int_list(values: Any, name: str, *, min_value: int | None = None, non_empty: bool = True) -> list[int]:
    """A list of ints (a single int or any iterable of ints), each checked like :func:`check_int`."""
    if _is_int(values):
        values = [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of ints, got {values!r}")
    out = [check_int(v, f"{name}[{i}]", min_value=min_value) for i, v in enumerate(values)]
    if non_empty and not out:
        raise ValueError(f"{name} must not be empty")
    return out


def _bounds_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return " >= 0" if lo == 0 else (" >= 1 (positive)" if lo == 1 else f" >= {lo}")
    if hi is not None:
        return f" <= {hi}"
    return ""
