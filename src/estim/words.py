"""A record in words, for people: ``estim show``, the HTML report, the CSV's text columns.

No ``None``, no enum names: ``biphasic_symmetric`` is "biphasic, symmetric", a
dense-disperse channel is "2 Hz alternating with 100 Hz every 3 s", a missing
field is "not recorded". Times are shown in the machine's local time zone.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from estim.durations import format_duration

if TYPE_CHECKING:
    from estim.plan import ChannelPlan
from estim.record import EventRecord

NOT_RECORDED = "not recorded"

WAVEFORMS = {
    "biphasic_symmetric": "biphasic, symmetric",
    "biphasic_asymmetric": "biphasic, asymmetric",
    "monophasic": "monophasic",
}

OUTCOMES = {
    "completed": "completed",
    "stopped": "stopped early",
    "aborted": "aborted by estim",
    "faulted": "ended by a unit fault",
    "link_lost": "ended: the link to the unit was lost",
    "refused": "refused: nothing was delivered",
    "interrupted": "interrupted: the host stopped unexpectedly",
}

ENDED_BY = {"unit": "the unit's own deadline", "host": "estim's timer"}


def outcome(value: str | None) -> str:
    return "still running" if value is None else OUTCOMES.get(value, value.replace("_", " "))


def number(value: float) -> str:
    return f"{value:g}"


def rate(ch: ChannelPlan) -> str:
    """The channel's pulse rate, mode included."""
    if ch.mode == "dense_disperse":
        return (
            f"{number(ch.frequency_hz)} Hz alternating with {number(ch.alt_frequency_hz or 0)} Hz "
            f"every {number(ch.switch_s or 0)} s"
        )
    if ch.mode == "burst":  # frequency: the rate inside a burst; alt: bursts per second
        return (
            f"{number(ch.frequency_hz)} Hz in bursts of {number(ch.switch_s or 0)} s, "
            f"{number(ch.alt_frequency_hz or 0)} bursts a second"
        )
    return f"{number(ch.frequency_hz)} Hz"


def waveform(value: str) -> str:
    return WAVEFORMS.get(value, value.replace("_", " "))


def channel(ch: ChannelPlan) -> str:
    """``12 mA, 2 Hz, 250 us pulses, biphasic, symmetric``."""
    return (
        f"{number(ch.amplitude_ma)} mA, {rate(ch)}, {ch.pulse_width_us} us pulses, "
        f"{waveform(ch.waveform)}"
    )


def text(value: str | None) -> str:
    return NOT_RECORDED if value is None or not value.strip() else value


def parse_utc(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def local_time(utc: str | None, *, seconds: bool = True) -> str:
    """``2026-11-22 10:00:05 CET`` from the journal's UTC text; "-" if none."""
    if not utc:
        return "-"
    when = parse_utc(utc).astimezone()
    return when.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z").strip()


def seconds(value: float | None) -> str:
    """``1 min``, ``1.5 s`` (``estim.durations.format_duration``); "unknown" if none."""
    return "unknown" if value is None else format_duration(value)


def event(e: EventRecord) -> str:
    """One event as a sentence."""
    d = e.data

    def ms(key: str) -> str:
        value = d.get(key)
        return "an unknown time" if value is None else seconds(value / 1000)

    def channel_of(key: str = "channel") -> str:
        return f"channel {d.get(key)}"

    texts: dict[str, Any] = {
        "start_requested": lambda: f"start requested on {d.get('port', 'the unit')}",
        "start_accepted": lambda: "the unit accepted the start",
        "output_started": lambda: "output on",
        "ramp_done": lambda: "ramp done: full amplitude",
        "ramp_down": lambda: f"ramping down: {ms('remaining_ms')} left",
        "amplitude_set": lambda: f"{channel_of()}: amplitude set to {number(d['ma'])} mA",
        "amplitude_reached": lambda: f"{channel_of()}: output reached {number(d['ma'])} mA",
        "amplitude_refused": lambda: (
            f"{channel_of()}: {number(d['ma'])} mA refused: {d.get('error')}"
        ),
        "stop_requested": lambda: f"stop requested: {d.get('detail')}",
        "unit_stopped": lambda: f"output off after {ms('delivered_ms')}",
        "unit_completed": lambda: f"output off after {ms('delivered_ms')}: the dwell is complete",
        "fault": lambda: (
            f"UNIT FAULT {d.get('name')}"
            + (f" on channel {d['channel']}" if d.get("channel") else "")
        ),
        "button": lambda: f"button {d.get('button')} pressed on the unit",
        "events_missed": lambda: "some events from the unit were lost on the link",
        "unit_restarted": lambda: "THE UNIT RESTARTED (output is off)",
        "ended": lambda: f"session {outcome(d.get('outcome'))}: {d.get('reason')}",
        "interrupted": lambda: f"session interrupted: {d.get('reason')}",
    }
    make = texts.get(e.kind)
    if make is not None:
        try:
            return str(make())
        except (KeyError, TypeError, ValueError):
            pass
    details = ", ".join(
        f"{k} {v}" for k, v in d.items() if v is not None and k not in ("plan", "unit")
    )
    return e.kind.replace("_", " ") + (f": {details}" if details else "")
