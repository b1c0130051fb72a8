"""The documented range of every number estim's API takes, checked where it is
given (SAFETY.md 9): a value outside it is refused with one line naming the value,
the range and what the number is for, before anything is sent. ``status_every=0``
once sent 8,000 GET_STATUS in 5 s and tripped the unit's watchdog.

README's table of options is this one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from estim.errors import OptionError
from estim.safety import as_float, finite, given, shown


class Range(NamedTuple):
    low: float
    high: float
    unit: str
    what: str


RANGES: dict[str, Range] = {
    "status_every": Range(0.25, 60.0, "s", "how often a session asks the unit for its STATUS"),
    "give_up_after": Range(0.05, 10.0, "s", "how long a STOP is resent to a silent unit"),
    "timeout": Range(0.05, 600.0, "s", "how long a call waits for the unit's answer"),
    "response_timeout": Range(0.01, 2.0, "s", "how long each request waits before it is resent"),
    "retries": Range(0, 10, "", "how many times a request is resent"),
    "baudrate": Range(300, 4_000_000, "baud", "the serial line's speed"),
}


def checked(name: str, value: object) -> float:
    """``value`` if it is a number within ``RANGES[name]``; else ``OptionError``."""
    low, high, unit, what = RANGES[name]
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None or not finite(number) or not low <= number <= high:
        span = f"{low:g}-{high:g}{' ' + unit if unit else ''}"
        raise OptionError(
            f"{name} {given(value)} is outside {span} ({what}); give a value in that range"
        )
    return float(number)


def wait_timeout(value: float | None) -> float | None:
    """A ``wait(timeout)``: None (no limit) or a number of seconds, 0 or more."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not finite(value):
        raise OptionError(f"timeout {given(value)} is not a number of seconds; give one, or None")
    if as_float(value) == math.inf:  # an int too large for a float (400 digits)
        raise OptionError(f"timeout {shown(value)} s is too long; give fewer seconds, or None")
    if value < 0:
        raise OptionError(f"timeout {given(value)} is negative; give 0 or more seconds, or None")
    return float(value)


def whole(name: str, value: object) -> int:
    """``checked`` for a whole number."""
    number = checked(name, value)
    if number != int(number):
        raise OptionError(f"{name} {given(value)} must be a whole number")
    return int(number)
