"""The host core and a simulated unit, both sans I/O, joined by two simulated lines,
with no thread anywhere: the test moves time, the rig carries bytes and runs each
side at its own deadlines. So the session policy is tested as pure code: events
and times in, actions out, every step at an exact instant.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import Any

from estim.clock import ManualClock
from estim.core import HostCore, Result
from estim.errors import EstimError
from estim.info import UnitInfo
from estim.limits import ClinicLimits, Limits
from estim.plan import ChannelPlan, SessionPlan
from estim.policy import SessionPolicy
from estim.protocol import Message, StopReason
from estim.record import EventRecord
from estim.sim import Line, LinkFaults, SimulatedUnit, UnitConfig

CH1 = ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=12)


def plan(dwell: float = 600, **changes: Any) -> SessionPlan:
    fields: dict[str, Any] = {"dwell": dwell, "ramp": 5, "channels": [CH1]}
    fields.update(changes)
    return SessionPlan(**fields)


class Rig:
    def __init__(
        self,
        config: UnitConfig | None = None,
        *,
        faults: LinkFaults | None = None,
        seed: int = 0,
        clinic: ClinicLimits | None = None,
    ) -> None:
        self.clock = ManualClock(1000.0)
        self.unit = SimulatedUnit(config, clock=self.clock, seed=seed)
        self.unit.read_output()  # BOOTED went out before the host connected
        self.h2d = Line(faults or LinkFaults(), seed=2 * seed + 1)
        self.d2h = Line(faults or LinkFaults(), seed=2 * seed + 2)
        self.core = HostCore(name="rig", first_seq=0x100)
        self.info = UnitInfo.from_message(self.unit.config.device_info())
        self.limits = Limits(self.info, clinic)
        self.results: dict[object, Result] = {}
        self.records: list[EventRecord] = []
        #: journal behaviour: acknowledge records as durable at once, unless False
        self.journal_ok = True
        #: when the host is frozen, only the unit and the lines run
        self.frozen = False
        self._tokens = itertools.count()

    @property
    def now(self) -> float:
        return self.clock.now()

    def token(self) -> object:
        return f"t{next(self._tokens)}"

    # -- carrying bytes ---------------------------------------------------------------------

    def pump(self) -> None:
        """Exchange bytes until neither side has anything more to say now."""
        for _ in range(10_000):
            moved = False
            if not self.frozen:
                out = self.core.take()
                for wire in out.writes:
                    self.h2d.send(wire, self.now)
                self.results.update(out.resolved)
                for policy, record, _state in out.records():
                    self.records.append(record)
                    if self.journal_ok:
                        self.core.journal_durable(policy, record.n)
                moved = bool(out)
            data = self.h2d.take(self.now)
            if data:
                self.unit.receive(data)
                moved = True
            else:
                self.unit.poll()
            reply = self.unit.read_output()
            if reply:
                self.d2h.send(reply, self.now)
                moved = True
            if not self.frozen:
                back = self.d2h.take(self.now)
                if back:
                    self.core.receive(back, self.now)
                    moved = True
            if not moved:
                return
        raise AssertionError("the rig never went quiet")

    def run_until(self, t: float) -> None:
        """Let time pass to ``t``, running each side at each of its deadlines."""
        self.pump()
        while True:
            times = [t, self.unit.next_deadline(), self.h2d.next_due()]
            if not self.frozen:  # a frozen host reads nothing: what arrives waits on the line
                times += [self.core.next_deadline(), self.d2h.next_due()]
            step = min(x for x in times if x is not None)
            if step > self.now:  # at least 1 ns: the clock counts whole nanoseconds
                self.clock.advance(max(step - self.now, 1e-9))
            if not self.frozen:
                self.core.tick(self.now)
            self.pump()
            if not self.frozen:  # a runner would spin: the core must look ahead after a tick
                asked = self.core.next_deadline()
                assert asked is None or asked > self.now, (
                    f"woken in the past: {asked} <= {self.now}"
                )
            if self.now >= t:
                return

    def run(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    # -- the host's side ----------------------------------------------------------------------

    def start(self, the_plan: SessionPlan, session_id: int = 0x5E55) -> SessionPolicy:
        self.limits.check_plan(the_plan)
        policy = SessionPolicy(
            plan=the_plan,
            limits=self.limits,
            session_id=session_id,
            link=self.core,
            now=self.now,
            created_utc=datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc),
            start_requested={"plan": the_plan.model_dump(mode="json")},
        )
        self.start_token = self.token()
        self.core.start(policy, self.now, self.start_token)
        self.pump()
        return policy

    def started(self) -> Result:
        return self.results.get(self.start_token, "pending")  # type: ignore[return-value]

    def request(self, message: Message) -> Result:
        token = self.token()
        self.core.request(message, self.now, token)
        self.pump()
        return self.results.get(token, "pending")  # type: ignore[return-value]

    def set_amplitude(self, policy: SessionPolicy, channel: int, ma: float) -> object:
        token = self.token()
        self.core.set_amplitude(policy, channel, ma, self.now, token)
        self.pump()
        return token

    def stop(self, policy: SessionPolicy, reason: StopReason = StopReason.OPERATOR) -> object:
        token = self.token()
        self.core.stop_session(policy, reason, "stopped by the test", self.now, token)
        self.pump()
        return token

    def wait_end(self, policy: SessionPolicy, limit: float = 700.0) -> SessionPolicy:
        end = self.now + limit
        while not policy.done and self.now < end:
            self.run(min(1.0, end - self.now))
        assert policy.done, f"still {policy.state} after {limit} s"
        return policy

    def error(self, token: object) -> EstimError | None:
        result = self.results[token]
        return result if isinstance(result, EstimError) else None

    def kinds(self) -> list[str]:
        return [r.kind for r in self.records]
