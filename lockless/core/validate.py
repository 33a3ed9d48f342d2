"""The checks every configuration value goes through, written once.

Each raises :class:`~lockless.errors.ConfigError` naming the (dotted) field, the value
and what is allowed, so a typo in a config or experiment file fails loudly with the fix
in the message. ``bool`` is refused where a number is asked for: ``retries = true`` is a
typo, not 1. NaN and infinities are refused: a NaN passes every range comparison, and an
infinite interval means "never".
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from lockless.errors import ConfigError


def require_number(
    field: str,
    value: object,
    *,
    minimum: float = 0.0,
    strict: bool = False,
    maximum: float | None = None,
    allowed: str | None = None,
) -> float:
    """A finite number >= ``minimum`` (> with ``strict``), <= ``maximum`` if given."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if (
        not ok
        or value < minimum  # type: ignore[operator]
        or (strict and value == minimum)
        or (maximum is not None and value > maximum)  # type: ignore[operator]
    ):
        if allowed is None:
            low = f"> {minimum:g}" if strict else f">= {minimum:g}"
            allowed = f"a number {low}" + (f" and <= {maximum:g}" if maximum is not None else "")
        raise ConfigError(field, value, allowed)
    return float(value)  # type: ignore[arg-type]


def require_int(field: str, value: object, *, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer (not a bool) >= ``minimum``, <= ``maximum`` if given."""
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        high = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(field, value, f"an integer >= {minimum}{high}")
    return value


def require_choice(field: str, value: object, choices: Iterable[str]) -> str:
    """One of ``choices``."""
    options = tuple(choices)
    if value not in options:
        raise ConfigError(field, value, " | ".join(options))
    return value  # type: ignore[return-value]
