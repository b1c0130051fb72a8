"""``html``: a one-page report of one session for a clinician to print or attach to a
chart: who, where, what was planned and delivered, why it ended, each channel's
amplitude over the session, and every event. One self-contained file: inline CSS and
SVG, no script, no fonts, images or links to fetch."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from estim import __version__, words
from estim.durations import format_duration
from estim.export.facts import (
    fault_names,
    output_on_words,
    output_period,
    output_went_on,
    peak,
    peak_words,
)
from estim.export.svg import channel_plot
from estim.record import SessionRecord

STYLE = """
@page { size: A4; margin: 14mm; }
* { box-sizing: border-box; }
body { font: 10.5pt/1.4 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
       color: #111; background: #fff; max-width: 186mm; margin: 0 auto; padding: 8mm 0; }
h1 { font-size: 16pt; margin: 0 0 2pt; }
h2 { font-size: 11.5pt; margin: 12pt 0 4pt; border-bottom: 1px solid #999; padding-bottom: 2pt; }
.sub { color: #444; margin: 0 0 6pt; }
.banner { border: 2px solid #b00020; color: #b00020; font-weight: bold; padding: 4pt 8pt;
          margin: 6pt 0; }
.outcome { font-weight: bold; }
.outcome.bad { color: #b00020; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 2pt 6pt 2pt 0; }
table.facts th { width: 30%; font-weight: 600; color: #333; }
table.grid th, table.grid td { border-bottom: 1px solid #ddd; }
table.grid th { font-weight: 600; }
td.num, th.num { text-align: right; }
.cols { display: flex; gap: 16pt; }
.cols > div { flex: 1; }
figure { margin: 6pt 0; break-inside: avoid; page-break-inside: avoid; }
figcaption { font-size: 9.5pt; color: #333; }
svg.plot { width: 100%; height: auto; font: 10px system-ui, Arial, sans-serif; }
svg.plot .grid { stroke: #e3e3e3; stroke-width: 1; }
svg.plot .axis { stroke: #333; stroke-width: 1; }
.key { display: inline-block; width: 22pt; border-top: 2px solid #1f4e9c; vertical-align: middle; }
.key.planned { border-top: 2px dashed #6b6b6b; }
footer { margin-top: 12pt; font-size: 8.5pt; color: #555; }
@media print { body { padding: 0; } h2 { break-after: avoid; } tr { break-inside: avoid; } }
"""


def report(records: Sequence[SessionRecord]) -> bytes:
    (record,) = records
    return page(record).encode("utf-8")


def _facts(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="facts">{body}</table>'


def page(r: SessionRecord) -> str:
    plan, unit, period = r.plan, r.unit, output_period(r)
    on_words, off_words = output_on_words(r, _when)
    bad = r.outcome not in ("completed", None)
    delivered = (
        "unknown (the unit's figure was not received)"
        if r.delivered_s is None
        else f"{format_duration(r.delivered_s)} ({r.delivered_s:.3f} s), by the unit's clock"
    )
    why = r.stop_reason or ("still running" if r.outcome is None else words.NOT_RECORDED)
    ended_by = words.ENDED_BY.get(r.ended_by or "", "")
    session_rows = [
        ("Requested", f"{words.local_time(r.created_utc)} ({r.created_utc})"),
        ("Output on", on_words),
        ("Output off", off_words),
        (
            "Planned",
            f"{format_duration(r.planned_s)}, ramp {format_duration(plan.ramp)} up and down",
        ),
        ("Delivered", delivered),
        ("Outcome", words.outcome(r.outcome)),
        ("Why it ended", why),
        ("Faults", "; ".join(fault_names(r)) or "none"),
    ]
    if ended_by:
        session_rows.insert(-1, ("Ended by", ended_by))
    if r.journal_error:
        session_rows.append(("Journal error", r.journal_error))
    who_rows = [
        ("Patient reference", words.text(plan.patient_ref)),
        ("Clinician", words.text(plan.clinician)),
        ("Site", words.text(plan.site)),
        ("Condition", words.text(plan.condition)),
        ("Notes", words.text(plan.notes)),
    ]
    unit_rows = [
        ("Stimulator", f"{unit.model}, serial {unit.serial_number}"),
        ("Firmware", unit.firmware),
        ("Port", unit.port),
        ("Watchdog", f"{plan.watchdog:g} s"),
    ]
    channel_rows = "".join(
        "<tr>"
        f'<td class="num">{c.channel}</td>'
        f'<td class="num">{c.amplitude_ma:g} mA</td>'
        f'<td class="num">{escape(peak_words(peak(r, c.channel)))}</td>'
        f"<td>{escape(words.rate(c))}</td>"
        f'<td class="num">{c.pulse_width_us} us</td>'
        f"<td>{escape(words.waveform(c.waveform))}</td>"
        "</tr>"
        for c in plan.channels
    )
    figures = (
        "".join(
            f"<figure>{channel_plot(r, c.channel)}<figcaption>Channel {c.channel}: "
            f'<span class="key planned"></span> planned &nbsp; <span class="key"></span> '
            "reported by the unit (output on to output off; between its reports the line "
            "follows the unit's linear slew; after a change it did not report reaching, "
            "that slew from when the change was sent is an estimate)</figcaption></figure>"
            for c in plan.channels
        )
        if period and period.start_utc
        else f"<p>{_no_plot(r)}</p>"
    )
    events = "".join(
        f'<tr><td class="num">{e.t:.1f} s</td>'
        f'<td class="num">{"" if e.output_s is None else f"{e.output_s:.1f} s"}</td>'
        f"<td>{escape(words.local_time(e.utc))}</td>"
        f"<td>{escape(words.event(e))}</td></tr>"
        for e in r.events
    )
    title = f"Stimulation session {r.id}"
    banner = (
        '<p class="banner">SIMULATED UNIT: this session ran on estim\'s simulator; '
        "no current reached a patient.</p>"
        if unit.simulated
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>Electrical stimulation session</h1>
<p class="sub">Session {escape(r.id)} &middot; {escape(words.local_time(r.created_utc))} &middot;
<span class="outcome{" bad" if bad else ""}">{escape(words.outcome(r.outcome))}</span></p>
{banner}
</header>
<div class="cols">
<div><h2>Patient and clinician</h2>{_facts(who_rows)}</div>
<div><h2>Stimulator</h2>{_facts(unit_rows)}</div>
</div>
<h2>Session</h2>
{_facts(session_rows)}
<h2>Channels</h2>
<table class="grid"><thead><tr><th class="num">Channel</th><th class="num">Planned</th>
<th class="num">Highest reached</th><th>Rate</th><th class="num">Pulse width</th><th>Waveform</th>
</tr></thead><tbody>{channel_rows}</tbody></table>
<h2>Amplitude</h2>
{figures}
<h2>Events</h2>
<table class="grid"><thead><tr><th class="num">Time</th><th class="num">Output on</th><th>Local time</th><th>Event</th></tr>
</thead><tbody>{events}</tbody></table>
<footer>estim {escape(__version__)} &middot; from the journal's record of session {escape(r.id)}
(record schema version {r.schema_version}). Times are local to the machine that wrote this
report, UTC in brackets; "Time" is seconds since the start was requested, by this
computer's clock; "Output on" is seconds since the unit turned output on, by the unit's own
clock for its events; the plots use the latter.</footer>
</body>
</html>
"""


def _when(utc: str) -> str:
    return f"{words.local_time(utc)} ({utc})"


def _no_plot(r: SessionRecord) -> str:
    went = output_went_on(r)
    if went == "yes":
        return (
            "Output went on, but the unit's output-on event was not received, so there is "
            "no time line to plot."
        )
    if went == "unknown":
        return "Whether output went on is not known, so there is nothing to plot."
    return "No output was delivered, so there is nothing to plot."
