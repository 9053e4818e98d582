"""
Value checks shared by the command-line options of both commands.
"""

from __future__ import annotations


def positive_int(text: str) -> int:
    """
    Parse a whole number of at least 1, for ``usage.Options`` coercion.
    """
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return value


positive_int.coerceDoc = "A whole number of at least 1."  # type: ignore[attr-defined]


def positive_float(text: str) -> float:
    """
    Parse a number of seconds above zero, for ``usage.Options`` coercion.
    """
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be above 0, not {value}")
    return value


positive_float.coerceDoc = "A number above 0."  # type: ignore[attr-defined]
