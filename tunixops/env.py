"""Typed settings from the environment (healthchecks' envbool/envint, stricter).

A value that does not parse, or lies outside its range, stops the process at start with a message
naming the variable: a typo must not silently become False or zero.
"""

import os
import re

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(name: str) -> str | None:
    value = os.getenv(name)
    return None if value is None or not value.strip() else value.strip()


def envbool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: expected one of true/false/1/0/yes/no/on/off")


def _check_range(name: str, value: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise ImproperlyConfigured(f"{name}={value!r}: must be at least {lo}")
    if hi is not None and value > hi:
        raise ImproperlyConfigured(f"{name}={value!r}: must be at most {hi}")


def envint(name: str, default: int, *, min: int | None = None, max: int | None = None) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r}: expected an integer") from None
    _check_range(name, number, min, max)
    return number


def envfloat(
    name: str, default: float, *, min: float | None = None, max: float | None = None
) -> float:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r}: expected a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ImproperlyConfigured(f"{name}={value!r}: expected a finite number")
    _check_range(name, number, min, max)
    return number


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _raw(name) or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r}: must be one of {', '.join(choices)}")
    return value


_RATE = re.compile(r"([1-9][0-9]*)/(s|sec|second|m|min|minute|h|hour|d|day)")


def envrate(name: str, default: str, *, allow_off: bool = False) -> str:
    """A DRF throttle rate, `N/second|minute|hour|day` (or s, sec, m, min, h, d). With
    `allow_off`, `off` means no limit (returned as an empty string)."""
    value = _raw(name) or default
    if allow_off and value.lower() == "off":
        return ""
    if not _RATE.fullmatch(value):
        raise ImproperlyConfigured(
            f"{name}={value!r}: expected N/second, N/minute, N/hour or N/day"
            + (", or off" if allow_off else "")
        )
    return value


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]
