"""The sequence vectors' matching rule, and one-line renderings of frames for a report."""

from __future__ import annotations

from typing import Any

#: fields left out of a one-line rendering: they rarely explain a difference
_QUIET = ("time_ms",)


def matches(expected: Any, actual: Any) -> bool:
    """The sequence vectors' rule (PROTOCOL.md 13): every field given must match; a
    dict given for a nested record matches it partially; ``{"not": v}`` matches
    anything but v; fields not given (time_ms, an event's seq, delivered_ms) are
    not checked."""
    if isinstance(expected, dict) and set(expected) == {"not"}:
        return bool(actual != expected["not"])
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual)


def describe(frame: dict[str, Any] | None, like: dict[str, Any] | None = None) -> str:
    """``NACK(seq=5, error=OUT_OF_RANGE, field=DWELL, ...)``; with ``like`` of the same
    type, only the fields ``like`` names (so a frame reads beside its expectation)."""
    if frame is None:
        return "nothing"
    keys = [k for k in frame if k != "type" and k not in _QUIET]
    if like is not None and like.get("type") == frame.get("type"):
        keys = [k for k in keys if k in like] or keys
    return f"{frame.get('type', '?')}({', '.join(f'{k}={_value(frame[k], k)}' for k in keys)})"


def describe_all(frames: list[dict[str, Any]], like: list[dict[str, Any]] | None = None) -> str:
    if not frames:
        return "nothing"
    out = []
    for i, frame in enumerate(frames):
        hint = like[i] if like is not None and i < len(like) else None
        out.append(describe(frame, hint))
    return ", ".join(out)


def _value(value: Any, key: str = "") -> str:
    if isinstance(value, dict) and set(value) == {"not"}:
        return f"not {_value(value['not'], key)}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v, key) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_value(v, k)}" for k, v in value.items()) + "}"
    if key == "session_id" and isinstance(value, int) and value:
        return f"0x{value:08X}"
    return str(value)
