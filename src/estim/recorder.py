"""A session's records: made by the policy with the host's time only (pure),
built into ``EventRecord``s stamped in UTC here (issue 20: wall-clock stamping is
not the policy's job). The UTC of a record is the session's creation time plus the
host's monotonic seconds since then, so a wall clock that jumps mid-session never
reorders or shifts a record.

A runner asks for the records after it has written what the same decisions sent
(``Output.records``): a STOP never waits for its record to be built.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from estim.record import EventRecord

#: a record made and not yet built: (n, host time, kind, data, unit_ms, session state)
Raw = tuple[int, float, str, dict[str, Any], int | None, str]


class Recorder:
    def __init__(self, created_utc: datetime, t0: float) -> None:
        self.created_utc = created_utc
        self._t0 = t0
        #: every record built so far, in order
        self.events: list[EventRecord] = []
        self._unbuilt: list[Raw] = []
        #: built and not yet handed to the runner
        self._built: list[tuple[EventRecord, str]] = []

    @property
    def count(self) -> int:
        """How many records were made: the next one's number."""
        return len(self.events) + len(self._unbuilt)

    @property
    def waiting(self) -> bool:
        """Whether records wait to be handed over."""
        return bool(self._unbuilt or self._built)

    def add(
        self, now: float, kind: str, data: dict[str, Any], unit_ms: int | None, state: str
    ) -> int:
        """Make a record (not built yet); its number."""
        n = self.count
        self._unbuilt.append((n, now, kind, data, unit_ms, state))
        return n

    def take(self) -> list[tuple[EventRecord, str]]:
        """The records made since the last call, built, with the session state when
        each was made."""
        self.build()
        built, self._built = self._built, []
        return built

    def build(self) -> None:
        """Build what was made into ``events`` (handed over by ``take``)."""
        while self._unbuilt:  # one at a time: a failure leaves the rest, none twice
            n, now, kind, data, unit_ms, state = self._unbuilt[0]
            t = round(now - self._t0, 6)
            utc = (self.created_utc + timedelta(seconds=t)).isoformat(timespec="milliseconds")
            record = EventRecord(
                n=n, utc=utc.replace("+00:00", "Z"), t=t, unit_ms=unit_ms, kind=kind, data=data
            )
            del self._unbuilt[0]
            self.events.append(record)
            self._built.append((record, state))
