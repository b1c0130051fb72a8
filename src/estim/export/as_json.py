"""``json``: one record, indented; ``jsonl``: one record per line (any number)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from estim.record import SessionRecord


def one(records: Sequence[SessionRecord]) -> bytes:
    (record,) = records
    return (json.dumps(record.model_dump(mode="json"), indent=2) + "\n").encode()


def lines(records: Sequence[SessionRecord]) -> bytes:
    return "".join(
        json.dumps(r.model_dump(mode="json"), separators=(",", ":")) + "\n" for r in records
    ).encode()
