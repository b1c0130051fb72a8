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
