"""Settings read from the environment, parsed one way."""

from __future__ import annotations

import os

_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def env_flag(name: str, default: bool) -> bool:
    """The on/off setting ``$name``: 1/true/yes/on or 0/false/no/off, ``default`` when unset or empty.

    :raises ValueError: for any other value, naming the variable.
    """
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(f"{name}={value!r} must be 1/true/yes or 0/false/no")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """The whole-number setting ``$name``, ``default`` when unset or empty.

    :raises ValueError: for anything but a whole number of at least ``minimum``, naming the variable.
    """
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name}={value!r} must be a whole number of at least {minimum}")
    return number
