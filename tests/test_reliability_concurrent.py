"""Concurrent starts, many times (issue 18, SAFETY.md 9.1): every trial starts
two or three sessions on one unit at the same instant (threads released by one
barrier, or ``asyncio.gather``), on a line with a random delay of 0-30 ms; then
tries the attack that followed the interleaving: an amplitude that the started
session's *own* plan forbids (over 50 mA r.m.s. at its frequency and pulse width).

Counted, per runner: trials, sessions started, starts refused as busy, and
sessions whose unit ran anything but their own plan (the unit's configuration at
START is compared with the record). Must be one start per trial and 0 mismatches.
CI runs 40 trials per runner; ``ESTIM_RELIABILITY=full`` runs 1,000.
"""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from estim.clock import ManualClock
from estim.errors import OutputLimitError, UnitBusy
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.sim import SimulatedUnit, UnitConfig, serve

from .reliability_helpers import SEED, scaled
from .runners import RUNNERS, AsyncFacade, SessionFacade, connector

TRIALS = scaled(40, 1000)


def rms_ma(frequency_hz: float, pulse_width_us: int, peak_ma: float) -> float:
    """A biphasic pulse train's r.m.s. current (SAFETY.md 3)."""
    return peak_ma * (2 * pulse_width_us * 1e-6 * frequency_hz) ** 0.5


def over_the_limit(channel: ChannelPlan) -> float | None:
    """The smallest amplitude (0.1 mA steps) past 50 mA r.m.s. on this channel, if
    the unit (200 mA at most) could deliver it."""
    ma = 50 / rms_ma(channel.frequency_hz, channel.pulse_width_us, 1.0)
    ma = (int(ma * 10) + 1) / 10
    return ma if ma <= 200 else None


#: plans that differ in every field the unit is configured with
PLANS = [
    SessionPlan(
        dwell=60,
        ramp=5,
        channels=[ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)],
    ),
    SessionPlan(
        dwell=90,
        ramp=5,
        channels=[ChannelPlan(channel=1, frequency_hz=100, pulse_width_us=500, amplitude_ma=20)],
    ),
    SessionPlan(
        dwell=120,
        ramp=5,
        channels=[ChannelPlan(channel=1, frequency_hz=80, pulse_width_us=150, amplitude_ma=10)],
    ),
]


def _at_once(
    device: Any, clock: ManualClock, plans: list[SessionPlan], journal: Journal
) -> list[Any]:
    if isinstance(device, AsyncFacade):

        async def gathered() -> list[Any]:
            return await asyncio.gather(
                *(device._device.start(p, journal=journal) for p in plans), return_exceptions=True
            )

        return [
            r if isinstance(r, BaseException) else SessionFacade(device, r)
            for r in device.run(gathered())
        ]
    results: list[Any] = [None] * len(plans)
    barrier = threading.Barrier(len(plans))
    done = [clock.signal() for _ in plans]

    def caller(i: int) -> None:
        barrier.wait()
        try:
            results[i] = device.start(plans[i], journal=journal)
        except BaseException as err:  # the outcome counted
            results[i] = err
        finally:
            done[i].set()

    threads = [
        clock.start_thread(lambda i=i: caller(i), name=f"caller {i}") for i in range(len(plans))
    ]
    for signal in done:
        signal.wait()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("runner", RUNNERS)
def test_concurrent_starts_never_run_another_session_s_plan(runner: str, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    counts = dict.fromkeys(
        ("trials", "started", "busy", "mismatched", "attacks", "over_limit_accepted"), 0
    )
    peak_rms = 0.0
    with Journal(tmp_path / "estim.db") as journal:
        for _ in range(TRIALS):
            clock = ManualClock()
            unit = SimulatedUnit(
                UnitConfig(amplitude_max_ua=200_000, slew_max_ua_per_s=200_000), clock=clock
            )
            delay = rng.choice([0, 5, 10, 20, 30])
            plans = rng.sample(PLANS, rng.choice([2, 3]))
            query = f"?delay=1&delay_ms={delay}" if delay else ""
            with serve(unit) as url, connector(runner, clock)(url + query) as device:
                results = _at_once(device, clock, plans, journal)
                started = [r for r in results if not isinstance(r, BaseException)]
                others = [r for r in results if isinstance(r, BaseException)]
                assert all(isinstance(e, UnitBusy) for e in others), others
                counts["trials"] += 1
                counts["started"] += len(started)
                counts["busy"] += len(others)
                for session in started:
                    ours = session.plan.channels[0]
                    c = unit._configs[1]
                    ran = (c.frequency_dhz / 10, c.pulse_width_us, c.amplitude_ua / 1000)
                    if ran != (ours.frequency_hz, ours.pulse_width_us, ours.amplitude_ma):
                        counts["mismatched"] += 1
                    clock.advance(6)
                    over = over_the_limit(ours)
                    if over is not None:  # over 50 mA r.m.s. at this session's own plan
                        counts["attacks"] += 1
                        try:
                            session.set_amplitude(1, over)
                            counts["over_limit_accepted"] += 1
                        except OutputLimitError:
                            pass
                    clock.advance(2)
                    peak_rms = max(peak_rms, rms_ma(ran[0], ran[1], unit.output_ua(1) / 1000))
                    session.stop()
                    session.wait(timeout=30)
    print(f"\n{runner}: {counts}, highest r.m.s. reached {peak_rms:.1f} mA")
    assert counts["started"] == counts["trials"] == TRIALS
    assert counts["mismatched"] == 0
    assert counts["attacks"] > 0
    assert counts["over_limit_accepted"] == 0
    assert peak_rms <= 50
