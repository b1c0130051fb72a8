"""What ``estim conformance`` cannot see from the wire, and how a vendor checks it.

Everything the suite judges is what the unit *says*: its answers, its events and
the time_ms and amplitude_ua it reports. A unit that says the right thing while
its output stage does something else passes every clause. These properties need
a measurement of real output: a test load (a resistor on every channel, below
lead_off_ohm) with the current through it recorded against time, by an
oscilloscope or a data logger, beside the suite's run.
"""

from __future__ import annotations

from .clause import Rig

#: (the property, how a vendor checks it), always out of the wire's sight
ALWAYS: tuple[tuple[str, str], ...] = (
    (
        "the current delivered is the amplitude STATUS reports: zero in IDLE and FAULT, "
        "zero after STOP, a fault and the deadline, never above the envelope of section 7",
        "record the current through each channel's test load during a run and compare it "
        "with the unit's STATUS samples and events",
    ),
    (
        "channels outside the session's mask deliver nothing",
        "record every channel's test load, the unused ones included",
    ),
    (
        "output changes within 1 ms of a STOP, a fault, the deadline and the watchdog's "
        "expiry (the events carry the model instant, not the moment the output changed)",
        "trigger the recorder on the STOP frame (or the last HEARTBEAT) and measure the "
        "time to zero current",
    ),
    (
        "pulse shape: waveform, frequency, pulse width, burst and dense-disperse timing",
        "measure the pulses on the test load with an oscilloscope against the configuration",
    ),
    (
        "the stop button, over-current and compliance detection, internal faults",
        "press the button during output; drive a load above the compliance voltage; each "
        "must end output at once and latch its fault (the suite checks the latching of "
        "faults it can cause: the watchdog, lead-off with a rig)",
    ),
    (
        "the clock's drift (under 100 ppm) beyond what one dwell shows",
        "compare the unit's time_ms with a reference clock over a 600 s dwell",
    ),
)
LEAD_OFF_DURING_OUTPUT = (
    "lead-off during output: FAULT(LEAD_OFF) within 10 ms of an electrode opening",
    "run with a relay that opens one channel's load a known time after output starts "
    "(--lead-off-at SECONDS:CHANNEL)",
)
LEAD_OFF_AT_START = (
    "START refused LEAD_OFF on an open electrode",
    "run with one channel's load disconnected (--open-channel CHANNEL)",
)


def not_checked(rig: Rig) -> list[tuple[str, str]]:
    """What this run could not check: ALWAYS, and the lead-off rules without a rig."""
    out = list(ALWAYS)
    if rig.lead_off is None:
        out.append(LEAD_OFF_DURING_OUTPUT)
    if rig.open_channel is None:
        out.append(LEAD_OFF_AT_START)
    return out
