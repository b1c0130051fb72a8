"""``csv``: one row per session; ``events-csv``: one row per event. Flat columns a
spreadsheet reads (no JSON in a cell); times in UTC (ISO 8601) and in the local time
zone of the machine that exported them (``2026-11-22 10:00:05``, the zone at the session's
time in its own column).

Channel columns (``ch1_frequency_hz`` ...) run from channel 1 to the highest channel
any of the exported sessions used; after them, ``output_went_on`` (yes, no, unknown:
``estim.export.facts.output_went_on``; yes with an empty ``output_on_utc`` means the
unit's output-on time was not received).

No cell starts a spreadsheet formula: a text cell that begins with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return gets a single quote in front (OWASP's CSV
injection advice); numbers are written as numbers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from estim.export.facts import fault_names, highest_reached, output_period, output_went_on
from estim.record import SessionRecord
from estim.words import parse_utc

SESSION_COLUMNS = [
    "session",
    "schema_version",
    "patient_ref",
    "clinician",
    "site",
    "condition",
    "local_zone",
    "requested_local",
    "requested_utc",
    "output_on_local",
    "output_on_utc",
    "output_off_local",
    "output_off_utc",
    "planned_s",
    "delivered_s",
    "ramp_s",
    "outcome",
    "stop_reason",
    "ended_by",
    "faults",
    "unit_model",
    "unit_serial",
    "unit_firmware",
    "unit_simulated",
    "port",
    "notes",
]

CHANNEL_FIELDS = [
    "frequency_hz",
    "alt_frequency_hz",
    "switch_s",
    "pulse_width_us",
    "waveform",
    "mode",
    "planned_ma",
    "peak_reached_ma",
]
#: after the channel columns (so no column moves)
LAST_COLUMNS = ["output_went_on"]
#: a text cell starting with one of these is a formula to a spreadsheet
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

#: event data keys spread into their own columns, in this order; any other key goes
#: into ``other`` as ``key=value`` pairs (the plan and unit of ``start_requested`` are
#: left out: they are the session's own columns)
EVENT_KEYS = [
    "channel",
    "ma",
    "fault",
    "name",
    "reason",
    "detail",
    "outcome",
    "ended_by",
    "delivered_ms",
    "remaining_ms",
    "dwell_ms",
    "dwell_s",
    "ramp_s",
    "channel_mask",
    "button",
    "cause",
    "error",
    "expected",
    "received",
    "port",
]
EVENT_COLUMNS = [
    "session",
    "n",
    "utc",
    "local",
    "t_s",
    "unit_ms",
    "kind",
    *EVENT_KEYS,
    "other",
    "output_s",  # (added last: columns only ever get appended)
]


def local(utc: str | None) -> str:
    return "" if not utc else parse_utc(utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def zone(utc: str) -> str:
    """The local zone and offset at ``utc`` (the session's own time, so a July session
    exported in December says EDT, as its local times are given in)."""
    return parse_utc(utc).astimezone().strftime("%Z%z")


def cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e15 else repr(value)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def table(header: list[str], rows: Iterable[list[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180, as spreadsheets expect
    writer.writerow(header)
    for row in rows:
        writer.writerow([cell(v) for v in row])
    return buffer.getvalue().encode("utf-8")


def sessions(records: Sequence[SessionRecord]) -> bytes:
    width = max((c.channel for r in records for c in r.plan.channels), default=1)
    channels = [f"ch{n}_{f}" for n in range(1, width + 1) for f in CHANNEL_FIELDS]
    header = SESSION_COLUMNS + channels + LAST_COLUMNS
    return table(header, (_session_row(r, width) for r in records))


def _session_row(r: SessionRecord, width: int) -> list[Any]:
    plan, unit, period = r.plan, r.unit, output_period(r)
    on = period.start_utc if period else None
    off = period.end_utc if period else None
    row = [
        r.id,
        r.schema_version,
        plan.patient_ref,
        plan.clinician,
        plan.site,
        plan.condition,
        zone(r.created_utc),
        local(r.created_utc),
        r.created_utc,
        local(on),
        on,
        local(off),
        off,
        r.planned_s,
        r.delivered_s,
        plan.ramp,
        r.outcome or "live",
        r.stop_reason,
        r.ended_by,
        "; ".join(fault_names(r)),
        unit.model,
        unit.serial_number,
        unit.firmware,
        unit.simulated,
        unit.port,
        plan.notes,
    ]
    by_number = {c.channel: c for c in plan.channels}
    for n in range(1, width + 1):
        c = by_number.get(n)
        if c is None:
            row += [None] * len(CHANNEL_FIELDS)
            continue
        row += [
            c.frequency_hz,
            c.alt_frequency_hz,
            c.switch_s,
            c.pulse_width_us,
            c.waveform,
            c.mode,
            c.amplitude_ma,
            highest_reached(r, n),
        ]
    return [*row, output_went_on(r)]


def events(records: Sequence[SessionRecord]) -> bytes:
    def rows() -> Iterable[list[Any]]:
        for r in records:
            for e in r.events:
                data = e.data
                other = "; ".join(
                    f"{k}={v}"
                    for k, v in data.items()
                    if k not in EVENT_KEYS and k not in ("plan", "unit")
                )
                yield [
                    r.id,
                    e.n,
                    e.utc,
                    local(e.utc),
                    f"{e.t:.6f}",  # (text, and never negative)
                    e.unit_ms,
                    e.kind,
                    *(data.get(k) for k in EVENT_KEYS),
                    other,
                    "" if e.output_s is None else f"{e.output_s:.3f}",
                ]

    return table(EVENT_COLUMNS, rows())
