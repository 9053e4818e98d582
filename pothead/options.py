"""
Value checks shared by the command-line options of both commands.
"""

from __future__ import annotations

from twisted.python import usage


def require_positive(options: usage.Options, *names: str) -> None:
    """
    Check that each named option is above zero.

    Done in ``postOptions`` rather than by a coercer, because Twisted's
    coercion errors do not say which option was wrong.

    :raise usage.UsageError: naming the first option that is not.
    """
    for name in names:
        if not options[name] > 0:
            raise usage.UsageError(f"--{name} must be above 0, not {options[name]}")
