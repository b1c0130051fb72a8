"""Figure 2 (and 7b): stop latency, host call to the unit's output off.

One simulator process; for each of many sessions: ``device.start(plan)`` (60 s
dwell, the unit's minimum), let it run 0.2-0.3 s (seeded random, so the stop
falls anywhere between two heartbeats), then ``session.stop()``. The latency is
the unit's own ``output_off`` time ``t`` in the simulator's JSON log minus the
host's ``time.monotonic()`` just before the call (CLOCK_MONOTONIC is shared by
all processes on Linux).
"""

from __future__ import annotations

import random
import time
from functools import partial
from typing import Any

from benchlib import Context, Figure, Sim, percentile, say

from estim.device import Device, connect
from estim.errors import EstimError
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.protocol import State, Stop, StopReason, encode

PLAN = SessionPlan(
    dwell=60,
    ramp=5,
    channels=[ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)],
)
STOP_FRAME = encode(Stop(seq=0x1234, reason=int(StopReason.OPERATOR)))


def _is_off(session_id: int, entry: dict[str, Any]) -> bool:
    return bool(entry["kind"] == "output_off" and entry["session_id"] == session_id)


def stop_latencies(
    sim_options: tuple[str, ...], count: int, ctx: Context, tag: str
) -> tuple[list[float], int]:
    """Seconds from just before ``Session.stop()`` to the unit's ``output_off``, for
    the sessions that the STOP ended; and how many of ``count`` sessions ended
    otherwise (e.g. by the unit's watchdog when the host was starved of CPU). After
    such a failure the bench reconnects and clears the unit's fault, and goes on."""
    rng = random.Random(ctx.seed + len(sim_options))
    sim = Sim(ctx.workdir, sim_options, tag=tag)
    out: list[float] = []
    failures: list[str] = []
    retries = rejected = 0
    device: Device | None = None
    try:
        port = sim.wait_port()
        with Journal(ctx.workdir / f"{tag}.db") as journal:
            for _ in range(count):
                if device is None:
                    device = connect(port)
                    if device.status().state == State.FAULT:
                        device.clear_fault()
                try:
                    session = device.start(PLAN, journal=journal)
                    time.sleep(0.2 + rng.uniform(0.0, 0.1))
                    t_call = time.monotonic()
                    session.stop()
                    record = session.wait(timeout=10)
                    off = sim.wait_for(partial(_is_off, session.session_id), timeout=5)
                    if off["reason"] == "stop":
                        out.append(off["t"] - t_call)
                    else:
                        failures.append(
                            f"ended by {off['reason']!r} (host outcome {record.outcome}: "
                            f"{record.stop_reason}); unit's max frame gap {off['max_frame_gap_ms']} ms"
                        )
                except EstimError as err:
                    failures.append(f"{type(err).__name__}: {err}")
                try:
                    healthy = device.link.lost is None and device.status().state != State.FAULT
                except EstimError:
                    healthy = False
                if not healthy:
                    retries += device.link.stats.retries
                    rejected += device.link.stats.rejected_frames
                    device.close()
                    device = None
    finally:
        if device is not None:
            retries += device.link.stats.retries
            rejected += device.link.stats.rejected_frames
            device.close()
        sim.close()
    if retries or rejected:
        ctx.notes.append(
            f"{tag}: the driver resent {retries} request(s) and rejected {rejected} frame(s) from the unit"
        )
    for failure in failures:
        ctx.notes.append(f"{tag}: a session did not end by its STOP: {failure}")
    negative = [x for x in out if x < 0]
    if negative:
        ctx.notes.append(
            f"{tag}: {len(negative)} stop latencies were negative (clock skew?): {negative[:3]}"
        )
    if not out:
        raise RuntimeError(f"{tag}: no session ended by its STOP: {failures[:3]}")
    return out, len(failures)


def _figures(
    name: str,
    lat: list[float],
    failed: int,
    count: int,
    base: float | None,
    base_name: str,
    goal: str,
    limit: float,
) -> list[Figure]:
    p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
    n = f"n={len(lat)}" + ("" if len(lat) >= 100 else ": p99 is the maximum")
    return [
        Figure(f"{name}_p50", p50, "ms", base, f"{base_name}; {n}", "(p99 is the goal)", None),
        Figure(f"{name}_p99", p99, "ms", base, f"{base_name}; {n}", goal, p99 < limit),
        Figure(
            f"{name}_sessions_not_stopped",
            failed,
            "sessions",
            count,
            "sessions tried",
            "0 (every STOP ends its session)",
            failed == 0,
        ),
    ]


def measure(ctx: Context) -> list[Figure]:
    count = 10 if ctx.quick else 100
    say(f"figure 2: stop latency over {count} sessions on the pty")
    lat, failed = stop_latencies((), count, ctx, "stop")
    raw = ctx.shared.get("raw_roundtrip_p50_ms")
    return _figures(
        "stop_latency",
        lat,
        failed,
        count,
        raw,
        "raw pty echo round trip p50 (figure 1)",
        "p99 < 2 ms",
        2.0,
    )


def measure_baud(ctx: Context) -> list[Figure]:
    count = 10 if ctx.quick else 100
    say(f"figure 7b: stop latency over {count} sessions at 115200 baud")
    lat, failed = stop_latencies(("baud=115200",), count, ctx, "stop115200")
    wire = len(STOP_FRAME) * 10 / 115200 * 1000
    return _figures(
        "stop_latency_115200",
        lat,
        failed,
        count,
        wire,
        f"wire time of the {len(STOP_FRAME)}-byte STOP frame at 115200 baud",
        "p99 < STOP wire time + 2 ms (fig 2's goal above the wire floor)",
        wire + 2.0,
    )
