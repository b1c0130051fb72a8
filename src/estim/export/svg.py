"""An inline SVG plot of one channel's amplitude over a session: planned (dashed) and
what the unit reported (solid), with the operator's changes and the end marked.
Plain SVG 1.1 markup: no script, no external resources, prints as vector."""

from __future__ import annotations

import math
from html import escape

from estim.export.facts import Trace, amplitude_sets, planned_trace, reached_trace
from estim.record import SessionRecord

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 14, 34
PLANNED, REACHED, END = "#6b6b6b", "#1f4e9c", "#b00020"


def nice_step(span: float, ticks: int) -> float:
    raw = span / max(1, ticks)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * 0.999)  # 60.01 s: 10 s ticks


def channel_plot(record: SessionRecord, channel: int) -> str:
    planned = planned_trace(record, channel)
    reached = reached_trace(record, channel)
    x_max = max(t for t, _ in planned + reached) or 1.0
    y_max = max(ma for _, ma in planned + reached) or 1.0
    y_step = nice_step(y_max, 4)
    y_top = y_step * math.ceil(y_max * 1.1 / y_step)
    x_step = nice_step(x_max, 6)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + t / x_max * plot_w

    def y(ma: float) -> float:
        return TOP + plot_h - ma / y_top * plot_h

    def line(trace: Trace, colour: str, extra: str = "") -> str:
        points = " ".join(f"{x(t):.1f},{y(ma):.1f}" for t, ma in trace)
        return (
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{extra}/>'
        )

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-labelledby="ch{channel}-title" class="plot">',
        f'<title id="ch{channel}-title">Channel {channel}: amplitude in mA over seconds since '
        "output on; planned dashed, reached solid</title>",
    ]
    tick = 0.0
    while tick <= y_top + 1e-9:
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>'
        )
        tick += y_step
    tick = 0.0
    while tick <= x_max + 1e-9:
        parts.append(
            f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{TOP + plot_h}" y2="{TOP + plot_h + 4}" class="axis"/>'
            f'<text x="{x(tick):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{tick:g}</text>'
        )
        tick += x_step
    parts += [
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" class="axis"/>',
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" class="axis"/>',
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 4}" text-anchor="middle">seconds since output on</text>',
        f'<text x="12" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + plot_h / 2:.1f})">mA</text>',
        line(planned, PLANNED, ' stroke-dasharray="6 4"'),
    ]
    for t, ma in amplitude_sets(record, channel):
        parts.append(
            f'<circle cx="{x(t):.1f}" cy="{y(ma):.1f}" r="4" fill="white" '
            f'stroke="{PLANNED}" stroke-width="2"><title>set to {ma:g} mA</title></circle>'
        )
    if reached:
        parts.append(line(reached, REACHED))
        if record.outcome not in (None, "completed"):
            end_t = reached[-1][0]
            parts.append(
                f'<line x1="{x(end_t):.1f}" x2="{x(end_t):.1f}" y1="{TOP}" y2="{TOP + plot_h}" '
                f'stroke="{END}" stroke-width="1.5"/>'
                f'<text x="{x(end_t) + 4:.1f}" y="{TOP + 12}" fill="{END}">'
                f"{escape(_end_label(record))}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _end_label(record: SessionRecord) -> str:
    if record.faults:
        return f"fault {record.faults[0].name}"
    return (record.outcome or "").replace("_", " ")
