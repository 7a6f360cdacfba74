"""Checks of the numbers a program passes to ``Dispatcher`` and ``AgentRunner``.

The configuration file checks its own numbers (pydantic, with the same bounds); these
are for the constructors called in code, so that a NaN, an infinity or a duration no
clock can add to a time is a ConfigError naming the argument at once, not an
``OverflowError`` in a background thread later.
"""

from __future__ import annotations

from .errors import ConfigError
from .stores._url import MAX_SECONDS

__all__ = ["require_seconds", "require_up_to"]


def require_seconds(name: str, value: object, *, zero: bool = False) -> float:
    """``value`` as seconds: > 0 (>= 0 when ``zero``) and at most 1e9, finite."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    low_ok = number is not None and (number >= 0 if zero else number > 0)
    if number is None or not low_ok or not number <= MAX_SECONDS:
        least = ">= 0" if zero else "> 0"
        raise ConfigError(
            f"{name} must be a number of seconds {least} and <= {MAX_SECONDS:.0f}, got {value!r}"
        )
    return float(number)


def require_up_to(name: str, value: object, most: int) -> int:
    """``value`` as an integer from 1 to ``most``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ConfigError(f"{name} must be an integer from 1 to {most}, got {value!r}")
    return value
