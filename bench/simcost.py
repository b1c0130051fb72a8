"""Figure 9: the Python simulator's CPU per heartbeat, in-process.

A ``SimulatedUnit`` runs a session (channel 1 at 2 Hz, 250 us, 5 mA; 600 s dwell,
5 s ramp, 500 ms watchdog), fed only the bytes of HEARTBEAT frames naming it, each
followed by ``read_output()`` (its ACK), and timed with ``time.process_time``
(CLOCK_PROCESS_CPUTIME_ID) around exactly those two calls:

- paced (the figure): on a ``ManualClock`` moved 100 ms between heartbeats (outside
  the timed calls), so each heartbeat also does what 100 ms of the unit's time
  does (ramp, levels, its log), as in a real session;
- back to back (diagnostic): on the real clock, heartbeats one after the other.

Baseline: the protocol codec alone, timed the same way: decoding one HEARTBEAT
frame and encoding one ACK (what any Python unit must do per heartbeat).
The cost of the two ``process_time`` calls is measured on an empty body and
subtracted from every lane.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from benchlib import Context, Figure, say

from estim.clock import ManualClock
from estim.protocol import (
    Ack,
    ConfigureChannel,
    Decoder,
    Heartbeat,
    MessageType,
    Mode,
    Start,
    State,
    Waveform,
    encode,
)
from estim.sim import SimulatedUnit

GOAL_US = 40.0
SESSION = 0x5E551011


def _live_unit(clock: ManualClock | None) -> SimulatedUnit:
    unit = SimulatedUnit(clock=clock)
    unit.read_output()
    unit.receive(
        encode(
            ConfigureChannel(
                seq=1,
                channel=1,
                waveform=Waveform.BIPHASIC_SYMMETRIC,
                mode=Mode.CONTINUOUS,
                frequency_dhz=20,
                pulse_width_us=250,
                amplitude_ua=5000,
                alt_frequency_dhz=0,
                switch_ms=0,
            )
        )
    )
    unit.receive(
        encode(
            Start(
                seq=2,
                session_id=SESSION,
                dwell_ms=600_000,
                ramp_ms=5_000,
                watchdog_ms=500,
                channel_mask=1,
            )
        )
    )
    out = unit.read_output()
    if unit.session_id != SESSION:
        raise RuntimeError(f"the simulated unit did not start: {out.hex()}")
    return unit


def _timed(n: int, body: Callable[[int], object], between: Callable[[], object] | None) -> float:
    """Seconds of process CPU spent in ``body(i)``, summed over n calls."""
    clock = time.process_time
    total = 0.0
    for i in range(n):
        if between is not None:
            between()
        t0 = clock()
        body(i)
        total += clock() - t0
    return total


def measure(ctx: Context) -> list[Figure]:
    n = 2000 if ctx.quick else 5000
    say(f"figure 9: the Python simulator's CPU per heartbeat, {n} heartbeats in-process")
    frames = [encode(Heartbeat(seq=(3 + i) & 0xFFFF, session_id=SESSION)) for i in range(n)]
    ack = Ack(seq=3, request_type=MessageType.HEARTBEAT, state=State.RAMPING_UP)

    empty = _timed(n, lambda i: None, None) / n

    clock = ManualClock()
    paced = _live_unit(clock)

    def beat_paced(i: int) -> None:
        paced.receive(frames[i])
        paced.read_output()

    paced_s = _timed(n, beat_paced, lambda: clock.advance(0.1)) / n - empty
    if paced.session_id != SESSION or not paced.output_on or paced.events("watchdog"):
        raise RuntimeError("the paced session did not stay live")

    tight = _live_unit(None)

    def beat_tight(i: int) -> None:
        tight.receive(frames[i])
        tight.read_output()

    tight_s = _timed(n, beat_tight, None) / n - empty

    decoder = Decoder()

    def codec(i: int) -> None:
        decoder.feed(frames[i])
        encode(ack)

    codec_s = _timed(n, codec, None) / n - empty
    base = f"the codec alone: decode a HEARTBEAT, encode an ACK (n={n})"
    ctx.shared["sim_cpu_per_heartbeat_us"] = paced_s * 1e6
    return [
        Figure(
            "sim_cpu_per_heartbeat",
            paced_s * 1e6,
            "us",
            codec_s * 1e6,
            base,
            f"<= {GOAL_US:g} us of CPU",
            paced_s * 1e6 <= GOAL_US,
            title="Python simulator: CPU per heartbeat (receive + read_output, 100 ms apart)",
        ),
        Figure(
            "sim_cpu_per_heartbeat_back_to_back",
            tight_s * 1e6,
            "us",
            codec_s * 1e6,
            base,
            "info: the same on the real clock, heartbeats back to back",
            None,
            title="Python simulator: CPU per heartbeat, back to back",
        ),
    ]
