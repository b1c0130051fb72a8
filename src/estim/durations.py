"""Durations as people type them (``480``, ``"8m"``, ``"90s"``, ``"1m30s"``,
``"8:00"``) and as people read them (``8m``, ``1m30s``, ``2.5s``)."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

from estim.safety import finite, quoted, shown

_UNITS = {"h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, "sec": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|sec|h|m|s)")


def parse_duration(value: Any, what: str = "duration") -> float:
    """Seconds from 480, 480.0, "480", "8m", "90s", "1m30s", "8:00" or "0:08:00".

    Raises ValueError naming the value for anything else (text that is not a
    duration, NaN, infinity, booleans).
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is not a duration")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int of 400 digits: finite, and no duration at all
            raise ValueError(f"{what} {shown(value)} s is too large a number of seconds") from None
    elif isinstance(value, str):
        seconds = _parse_text(value.strip().lower(), what)
    else:
        raise ValueError(f"{what} {value!r} is not a duration")
    if not math.isfinite(seconds):
        raise ValueError(f"{what} {value!r} is not a finite duration")
    return seconds


def _parse_text(text: str, what: str) -> float:
    if not text:
        raise ValueError(f"{what} is empty; give seconds or text like 8m, 90s, 1m30s, 8:00")
    if re.fullmatch(r"[+-]?\d+(\.\d+)?", text):
        return float(text)
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}(\.\d+)?", text):
        parts = [float(p) for p in text.split(":")]
        if any(p >= 60 for p in parts[1:]):
            raise ValueError(
                f"{what} {quoted(text)}: minutes and seconds after ':' must be below 60"
            )
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + part
        return seconds
    compact = text.replace(" ", "")
    if compact and _PART.sub("", compact) == "" and _PART.search(compact):
        units = [m.group(2) for m in _PART.finditer(compact)]
        if len(units) == len(set(units)):
            return sum(float(m.group(1)) * _UNITS[m.group(2)] for m in _PART.finditer(compact))
    raise ValueError(
        f"{what} {quoted(text)} is not a duration; give seconds or text like 8m, 90s, 1m30s, 8:00"
    )


def format_duration(seconds: float) -> str:
    """A duration for people, one way everywhere: ``8 min``, ``1 min 30 s``,
    ``45 s``, ``2.6 s`` (a tenth of a second at most; records keep milliseconds)."""
    if not finite(seconds) or abs(seconds) >= 1e15:
        return f"{shown(seconds)} s"
    tenths = round(seconds * 10)
    if tenths == 0 and seconds > 0:
        return f"{seconds * 1000:.0f} ms"
    if tenths >= 600:
        minutes, rest = divmod(tenths, 600)
        return f"{minutes} min" + (f" {rest / 10:g} s" if rest else "")
    return f"{tenths / 10:g} s"


# --- the plan's durations: a grammar a JSON Schema pattern can state, bounds included --------
#
# ``parse_duration`` takes anything a person might type (``1.5h``, ``0:08:00``, ``90 sec``,
# ``1m90s``); its set of strings between two bounds is not a regular language a schema can
# check. A plan's ``dwell`` and ``ramp`` take a smaller grammar whose in-range strings are
# one regular expression (``duration_pattern``), so the published JSON Schema accepts
# exactly the text durations ``SessionPlan`` accepts:
#
#   SECONDS          480   90.5           (no sign, no leading zeros)
#   SECONDS s        90s   90 s   90sec
#   MINUTES m        8m    1.5m   8 min
#   M m SS s         1m30s   1m 30s   1min30sec   (whole minutes, seconds below 60)
#   M:SS             8:00   1:30   1:30.5         (whole minutes, two-digit seconds below 60)
#
# Units in either case; spaces around the text and between its parts. The bounds are
# whole minutes (dwell 1-10 min, ramp 0-5 min), which is what keeps the pattern exact.
# START carries milliseconds (PROTOCOL.md 2), so a plan takes whole milliseconds only,
# and the pattern says so too: seconds with at most three decimals that are not zeros
# (90.125, 90.1250), minutes with at most four, then one 0 or 5 (1.00005m is 60.003 s).

_NUM = r"(?P<{0}>0|[1-9][0-9]*)(?:\.(?P<{0}_frac>[0-9]+))?"
_SEC60 = r"(?P<{0}>[0-5]?[0-9])(?:\.(?P<{0}_frac>[0-9]+))?"  # seconds below 60
_S = r"(?:[sS](?:[eE][cC])?)"
_M = r"(?:[mM](?:[iI][nN])?)"
_SP = r"[ ]*"
PLAN_DURATION_GRAMMAR = re.compile(
    rf"{_SP}(?:"
    rf"{_NUM.format('plain')}"
    rf"|{_NUM.format('s')}{_SP}{_S}"
    rf"|{_NUM.format('m')}{_SP}{_M}"
    rf"|(?P<mm>0|[1-9][0-9]*){_SP}{_M}{_SP}{_SEC60.format('mm_s')}{_SP}{_S}"
    rf"|(?P<cm>0|[1-9][0-9]*):(?P<cs>[0-5][0-9])(?:\.(?P<cs_frac>[0-9]+))?"
    rf"){_SP}"
)


def plan_duration_seconds(text: str) -> Fraction | None:
    """The exact seconds of ``text`` in the plan grammar, or None if it is not in it
    (exact, so a bound is judged on the digits, as the schema's pattern judges them)."""
    m = PLAN_DURATION_GRAMMAR.fullmatch(text)
    if m is None:
        return None

    def num(name: str) -> Fraction:
        frac = m.group(f"{name}_frac")
        return Fraction(m.group(name) + (f".{frac}" if frac else ""))

    if m.group("plain") is not None:
        return num("plain")
    if m.group("s") is not None:
        return num("s")
    if m.group("m") is not None:
        return num("m") * 60
    if m.group("mm") is not None:
        return Fraction(int(m.group("mm")) * 60) + num("mm_s")
    return Fraction(int(m.group("cm")) * 60) + num("cs")


def int_range_pattern(low: int, high: int) -> str:
    """A regular expression for the whole numbers ``low``..``high`` written without
    leading zeros (ECMA-262 and Python alike: digits as ``[0-9]``)."""
    if not 0 <= low <= high:
        raise ValueError(f"bad range {low}..{high}")
    parts = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        lo = max(low, 0 if digits == 1 else 10 ** (digits - 1))
        hi = min(high, 10**digits - 1)
        if lo <= hi:
            parts += _same_length(str(lo), str(hi))
    return "(?:" + "|".join(parts) + ")"


def _same_length(lo: str, hi: str) -> list[str]:
    """Patterns for the numbers lo..hi, both of the same number of digits."""
    if lo == hi:
        return [lo]
    if len(lo) == 1:
        return [f"[{lo}-{hi}]"]
    if lo[0] == hi[0]:
        return [lo[0] + p for p in _same_length(lo[1:], hi[1:])]
    out = []
    rest = len(lo) - 1
    if lo[1:] == "0" * rest:
        first_full = int(lo[0])
    else:
        out += [lo[0] + p for p in _same_length(lo[1:], "9" * rest)]
        first_full = int(lo[0]) + 1
    last_full = int(hi[0]) if hi[1:] == "9" * rest else int(hi[0]) - 1
    if first_full <= last_full:
        head = str(first_full) if first_full == last_full else f"[{first_full}-{last_full}]"
        out.append(head + "[0-9]" * rest)
    if hi[1:] != "9" * rest:
        out += [hi[0] + p for p in _same_length("0" * rest, hi[1:])]
    return out


def duration_pattern(low_min: int, high_min: int) -> str:
    """The JSON Schema ``pattern`` of the plan-grammar texts from ``low_min`` to
    ``high_min`` whole minutes, bounds included, in whole milliseconds (see the grammar
    above)."""
    frac = r"(?:\.[0-9]{1,3}0*)?"  # seconds: whole milliseconds
    min_frac = r"(?:\.[0-9]{1,4}(?:[05]0*)?)?"  # minutes: x 60000 is a whole number
    zeros = r"(?:\.0+)?"
    low_s, high_s = low_min * 60, high_min * 60

    def upto(low: int, high: int, frac: str) -> str:  # low <= x <= high, x as a decimal
        below = f"{int_range_pattern(low, high - 1)}{frac}" if low < high else None
        return "(?:" + "|".join(p for p in (below, f"{high}{zeros}") if p) + ")"

    seconds = upto(low_s, high_s, frac)
    minutes = upto(low_min, high_min, min_frac)
    sec60 = rf"[0-5]?[0-9]{frac}"
    whole = int_range_pattern(low_min, high_min - 1) if low_min < high_min else None
    forms = [
        seconds,
        rf"{seconds}{_SP}{_S}",
        rf"{minutes}{_SP}{_M}",
        rf"{high_min}{_SP}{_M}{_SP}0?0{zeros}{_SP}{_S}",
        rf"{high_min}:00{zeros}",
    ]
    if whole is not None:
        forms += [rf"{whole}{_SP}{_M}{_SP}{sec60}{_SP}{_S}", rf"{whole}:[0-5][0-9]{frac}"]
    # (?![\s\S]) rather than $: Python's $ also matches before a final newline
    return rf"^{_SP}(?:{'|'.join(forms)}){_SP}(?![\s\S])"
