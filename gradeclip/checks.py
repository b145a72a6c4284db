"""Argument checks shared across modules, each raising ValueError that names the value and what is allowed."""
from __future__ import annotations


def positive_int(value, name: str, hint: str = "") -> int:
    """``value`` if it is an int >= 1 (not a bool); ValueError "NAME must be an int >= 1HINT, got VALUE" else."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{hint}, got {value!r}")
    return value
