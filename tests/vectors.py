"""Loading the golden vectors of firmware_protocol/vectors/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "firmware_protocol" / "vectors"


def load(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))
    return data


def valid() -> list[dict[str, Any]]:
    return load("requests") + load("responses") + load("events")


def invalid() -> list[dict[str, Any]]:
    return load("invalid")


def sequences() -> list[dict[str, Any]]:
    return load("sequences")


def matches(expected: Any, actual: Any) -> bool:
    """The sequence vectors' rule: every field given must match; a dict given for a
    nested record matches it partially; ``{"not": v}`` matches anything but v;
    fields not given (time_ms, an event's seq, delivered_ms) are not checked."""
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
