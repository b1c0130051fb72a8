"""Exports of session records: one table of formats, each a pure function from records
to bytes. The CLI and a charting app only pick one::

    from estim.export import FORMATS
    data = FORMATS["fhir"].render(journal.query(patient="P-0042"))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from estim.export import as_csv, as_fhir, as_html, as_json
from estim.record import SessionRecord


@dataclass(frozen=True)
class Format:
    render: Callable[[Sequence[SessionRecord]], bytes]
    #: True if the format holds exactly one session
    one_session: bool
    help: str


FORMATS: dict[str, Format] = {
    "json": Format(as_json.one, True, "one session's whole record, indented"),
    "jsonl": Format(as_json.lines, False, "one whole record per line"),
    "csv": Format(as_csv.sessions, False, "one row per session, flat columns for a spreadsheet"),
    "events-csv": Format(as_csv.events, False, "one row per event, flat columns"),
    "fhir": Format(
        as_fhir.bundle, False, "a FHIR R4 transaction Bundle: Procedure, Device, Observations"
    ),
    "html": Format(as_html.report, True, "one session's printable report with amplitude plots"),
}


def export(name: str, records: Sequence[SessionRecord]) -> bytes:
    """``records`` in format ``name``. Raises ValueError for an unknown format, or a
    one-session format given other than one record."""
    fmt = FORMATS.get(name)
    if fmt is None:
        raise ValueError(f"unknown export format {name!r}; known: {', '.join(FORMATS)}")
    if fmt.one_session and len(records) != 1:
        raise ValueError(
            f"format {name} holds exactly one session, not {len(records)}; "
            "use jsonl, csv or fhir for several"
        )
    return fmt.render(records)


__all__ = ["FORMATS", "Format", "export"]
