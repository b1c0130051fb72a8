"""Durations as people type them (``480``, ``"8m"``, ``"90s"``, ``"1m30s"``,
``"8:00"``) and as people read them (``8m``, ``1m30s``, ``2.5s``)."""

from __future__ import annotations

import math
import re
from typing import Any

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
        seconds = float(value)
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
            raise ValueError(f"{what} {text!r}: minutes and seconds after ':' must be below 60")
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
        f"{what} {text!r} is not a duration; give seconds or text like 8m, 90s, 1m30s, 8:00"
    )


def format_duration(seconds: float) -> str:
    """A duration for people, one way everywhere: ``8 min``, ``1 min 30 s``,
    ``45 s``, ``2.6 s`` (a tenth of a second at most; records keep milliseconds)."""
    if not math.isfinite(seconds):
        return f"{seconds!r} s"
    tenths = round(seconds * 10)
    if tenths == 0 and seconds > 0:
        return f"{seconds * 1000:.0f} ms"
    if tenths >= 600:
        minutes, rest = divmod(tenths, 600)
        return f"{minutes} min" + (f" {rest / 10:g} s" if rest else "")
    return f"{tenths / 10:g} s"
