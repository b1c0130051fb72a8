"""The simulated unit: the device side of PROTOCOL.md, sans I/O.

``receive(bytes)`` takes what the host sent, ``read_output()`` gives back what the
unit sends, ``poll()`` carries out what time alone does (ramps, the dwell deadline,
the watchdog, scripted faults) and ``next_deadline()`` says when ``poll`` must next
run. Whoever serves the unit (``sim://``, a pty, TCP) calls these under one lock;
the unit itself never blocks, never starts a thread and reads time only from its
injected clock.

Time inside is integer microseconds, so a session on a manual clock is exact: a
600 s dwell delivers 600,000 ms, not 599,999.

The output model is PROTOCOL.md section 7: for a channel with target ``A`` and ramp
``R``, ``out(t) = min(level(t), A * (D - t) / R)``, where ``level`` slews toward the
setpoint at ``A / R`` and ``D`` is the dwell deadline. Output is zero at ``D`` by
construction, whatever the host does.

``log`` records what the unit actually did (state changes, output on and off,
levels, faults), for tests and benchmarks to measure from the unit's side.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial, wraps
from typing import Any, ClassVar, TypeVar, cast

from estim.clock import REAL_CLOCK, Clock
from estim.protocol import (
    IMPEDANCE_UNKNOWN,
    INTER_BYTE_GAP_S,
    Ack,
    AmplitudeReached,
    BootCause,
    Booted,
    Button,
    ButtonPressed,
    ChannelStatus,
    ClearFault,
    Completed,
    ConfigureChannel,
    Decoder,
    ErrorCode,
    Event,
    Fault,
    FaultRaised,
    Field,
    FrameError,
    GetStatus,
    Heartbeat,
    Hello,
    Kind,
    Message,
    MessageType,
    Mode,
    Nack,
    OutputStarted,
    RampDone,
    RampDownStarted,
    SetAmplitude,
    Start,
    State,
    Status,
    Stop,
    Stopped,
    StopReason,
    encode,
)

from .config import UnitConfig

_US = 1_000_000
#: PROTOCOL.md 10: how many CONFIGURE_CHANNEL, SET_AMPLITUDE and CLEAR_FAULT answers are remembered
REPLY_CACHE = 8
_REMEMBERED = (ConfigureChannel, SetAmplitude, ClearFault)
#: PROTOCOL.md 3.4: the NACK for a request that failed a check after its CRC
_REJECTION_ERRORS = {
    "version": ErrorCode.UNSUPPORTED_VERSION,
    "kind": ErrorCode.UNKNOWN_TYPE,
    "flags": ErrorCode.BAD_FLAGS,
    "type": ErrorCode.UNKNOWN_TYPE,
    "payload": ErrorCode.BAD_PAYLOAD,
}
#: PROTOCOL.md 10: ended session ids kept exactly; older ones are covered by the floor
ENDED_SESSIONS = 64
#: impedance reported for an open electrode (a pulled needle clip)
OPEN_CIRCUIT_OHM = 10_000_000


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """Serialise a public method: tests inject faults from their own thread."""

    @wraps(method)
    def run(self: SimulatedUnit, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return cast(F, run)


def _changes(method: F) -> F:
    """A fault injection: serialised, and whoever serves the unit is woken after it."""

    @wraps(method)
    def run(self: SimulatedUnit, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            result = method(self, *args, **kwargs)
        if self.wakeup is not None:
            self.wakeup()
        return result

    return cast(F, run)


class Refused(Exception):
    """A request is answered with NACK (internal to the unit)."""

    def __init__(self, error: ErrorCode, field: Field = Field.NONE, channel: int = 0) -> None:
        self.error, self.field, self.channel = error, field, channel


@dataclass(frozen=True)
class LogEntry:
    """One thing the unit did. ``t`` is clock time in seconds."""

    t: float
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 6), "kind": self.kind, **self.data}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class _Channel:
    """One channel's slew: from ``start`` at ``t0`` toward ``setpoint`` at target/ramp."""

    def __init__(self, number: int, target: int, ramp_us: int, t0: int) -> None:
        self.number = number
        self.target = target
        self.ramp_us = ramp_us
        self.t0 = t0
        self.start = 0
        self.setpoint = target
        self.report_reached = False  # AMPLITUDE_REACHED owed when the slew completes

    def level(self, t: int) -> int:
        moved = self.target * max(0, t - self.t0) // self.ramp_us
        if self.setpoint >= self.start:
            return min(self.setpoint, self.start + moved)
        return max(self.setpoint, self.start - moved)

    def reached_at(self) -> int:
        return self.t0 + _ceil_div(abs(self.setpoint - self.start) * self.ramp_us, self.target)

    def cap(self, t: int, deadline: int) -> int:
        return self.target * max(0, deadline - t) // self.ramp_us

    def output(self, t: int, deadline: int) -> int:
        if t >= deadline:
            return 0
        return min(self.level(t), self.cap(t, deadline))

    def retarget(self, t: int, setpoint: int) -> None:
        self.start = self.level(t)
        self.t0 = t
        self.setpoint = setpoint


class _Session:
    def __init__(self, start: Start, t: int, channels: dict[int, _Channel]) -> None:
        self.id = start.session_id
        #: the START that began it: a copy must match it (PROTOCOL.md 6.1, 10)
        self.start = start
        self.start_us = t
        self.deadline_us = t + start.dwell_ms * 1000
        self.watchdog_us = start.watchdog_ms * 1000
        self.mask = start.channel_mask
        self.channels = channels
        self.ramp_done = False
        self.ramping_down = False
        #: the longest silence between valid requests while output was on
        self.max_gap_us = 0
        #: bumped whenever a setpoint changes; keys the cached crossing times below
        self.version = 0
        self.cache: dict[tuple[Any, ...], int | None] = {}


def _first_true(pred: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """Smallest t in [lo, hi] with pred(t), for a predicate that stays true once true."""
    if lo > hi or not pred(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


class SimulatedUnit:
    """A stimulator that speaks PROTOCOL.md v1. See the module docstring."""

    # what a power cycle resets (set in _boot)
    _boot_us: int
    _decoder: Decoder
    _outbox: bytearray
    _pending: list[Event]
    _event_seq: int
    _replies: OrderedDict[int, tuple[Message, Ack | Nack]]
    _ended: deque[int]
    _ended_floor: int
    _configs: dict[int, ConfigureChannel]
    _state: State
    _session: _Session | None
    _faults: int
    _fault_channel: int
    _last_rx: int | None
    _logged_levels: list[int]

    def __init__(
        self,
        config: UnitConfig | None = None,
        *,
        clock: Clock | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config or UnitConfig()
        self.clock: Clock = clock or REAL_CLOCK
        self.random = random.Random(seed)
        self.log: list[LogEntry] = []
        #: called with every new log entry (``estim simulate --json`` prints them)
        self.listeners: list[Callable[[LogEntry], None]] = []
        #: set by whoever serves the unit: called after a fault injection, so it
        #: polls again and forwards what the unit sent
        self.wakeup: Callable[[], None] | None = None
        self._lock = threading.RLock()
        self._done_until = 0
        #: every valid request received since power-on, by type (resets do not clear it)
        self.requests_seen: Counter[MessageType] = Counter()
        self.impedance_ohm = [self.config.impedance_ohm] * self.config.channels
        #: actions scripted at clock times: (t_us, action, args)
        self._scheduled: list[tuple[int, str, tuple[int, ...]]] = []
        #: actions scripted at offsets into every session: (offset_us, action, args)
        self._per_session: list[tuple[int, str, tuple[int, ...]]] = []
        self._session_actions: list[tuple[int, str, tuple[int, ...]]] = []
        self._boot(BootCause.POWER_ON, self._now())

    # -- I/O entry points ---------------------------------------------------------

    @_locked
    def receive(self, data: bytes) -> None:
        """Bytes from the host."""
        now = self._now()
        self._advance(now)
        self._decoder.receive(data, now)  # in whole us: the 50 ms gap is exact
        while True:
            try:
                message = self._decoder.next_message()
            except FrameError as err:
                self._bad_frame(err, now)
                continue
            if message is None:
                break
            if message.KIND == Kind.REQUEST:
                if self._feeds_watchdog(message):
                    if self._session is not None and self._last_rx is not None:
                        gap = now - self._last_rx
                        self._session.max_gap_us = max(self._session.max_gap_us, gap)
                    self._last_rx = now
                self.requests_seen[message.TYPE] += 1
                self._request(message, now)
        # what the requests made due now (a slew of zero length), after their answers
        self._advance(now)
        self._flush_events()
        self._log_levels(now)

    def _feeds_watchdog(self, message: Message) -> bool:
        """PROTOCOL.md 9.1: only a HEARTBEAT naming the live session feeds its
        watchdog (START arms it). Nothing else proves that the session loop is
        alive: not a poll, not an amplitude change, not a refused request."""
        return (
            isinstance(message, Heartbeat)
            and self._session is not None
            and message.session_id == self._session.id
        )

    @_locked
    def read_output(self) -> bytes:
        """Bytes for the host, in order; the buffer is emptied."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    @_locked
    def poll(self) -> None:
        """Do what time alone does, up to now."""
        now = self._now()
        self._advance(now)
        self._flush_events()
        self._log_levels(now)

    @_locked
    def next_deadline(self) -> float | None:
        """Clock time (seconds) at which ``poll`` must next run, or None."""
        pending = self._timed()
        return None if pending is None else pending[0] / _US

    # -- observation ----------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def session_id(self) -> int:
        return self._session.id if self._session else 0

    @property
    def faults(self) -> set[Fault]:
        return {f for f in Fault if self._faults & (1 << (f - 1))}

    @_locked
    def output_ua(self, channel: int, t: float | None = None) -> int:
        """A channel's output now (or at clock time ``t`` within the live session)."""
        session = self._session
        if session is None or channel not in session.channels:
            return 0
        at = self._now() if t is None else round(t * _US)
        return session.channels[channel].output(at, session.deadline_us)

    def outputs(self) -> list[int]:
        return [self.output_ua(c) for c in range(1, self.config.channels + 1)]

    @property
    def output_on(self) -> bool:
        return any(self.outputs())

    def events(self, kind: str) -> list[LogEntry]:
        return [e for e in self.log if e.kind == kind]

    # -- fault injection --------------------------------------------------------------
    # Each acts now; ``inject_at`` and ``inject_in_session`` script the same actions
    # (by name: lead_off, impedance, over_current, estop, mark, reset, internal).

    @_changes
    def set_impedance(self, channel: int, ohm: int) -> None:
        """Change an electrode's impedance now; above lead_off_ohm is a lead-off."""
        self._inject("impedance", (channel, ohm))

    def pull_electrode(self, channel: int) -> None:
        self.set_impedance(channel, OPEN_CIRCUIT_OHM)

    @_changes
    def over_current(self, channel: int) -> None:
        self._inject("over_current", (channel,))

    @_changes
    def press(self, button: Button) -> None:
        """A button on the unit. ESTOP stops output and latches a fault."""
        self._inject("mark" if button == Button.MARK else "estop", ())

    @_changes
    def internal_fault(self) -> None:
        self._inject("internal", ())

    @_changes
    def reset(self, cause: BootCause = BootCause.RESET) -> None:
        """Power cycle: output off, everything forgotten, idle, BOOTED."""
        self._inject("reset", (int(cause),))

    @_changes
    def inject_at(self, at: float, action: str, *args: int) -> None:
        """Script an action at clock time ``at`` (seconds)."""
        self._check_action(action, args)
        self._scheduled.append((round(at * _US), action, args))
        self._scheduled.sort(key=lambda a: a[0])

    @_changes
    def inject_in_session(self, offset: float, action: str, *args: int) -> None:
        """Script an action ``offset`` seconds after output starts, in every session."""
        self._check_action(action, args)
        self._per_session.append((round(offset * _US), action, args))

    _ACTIONS: ClassVar[dict[str, int]] = {
        "lead_off": 1,
        "impedance": 2,
        "over_current": 1,
        "estop": 0,
        "mark": 0,
        "reset": 0,
        "internal": 0,
    }

    def _check_action(self, action: str, args: tuple[int, ...]) -> None:
        if action not in self._ACTIONS:
            raise ValueError(f"unknown action {action!r}; known: {', '.join(self._ACTIONS)}")
        if action == "reset":
            return
        if len(args) != self._ACTIONS[action]:
            raise ValueError(f"action {action!r} takes {self._ACTIONS[action]} argument(s)")
        if args:
            self._check_channel(args[0])

    def _inject(self, action: str, args: tuple[int, ...]) -> None:
        self._check_action(action, args)
        now = self._now()
        self._advance(now)
        self._act(action, args, now)
        self._advance(now)
        self._flush_events()
        self._log_levels(now)

    def _act(self, action: str, args: tuple[int, ...], t: int) -> None:
        if action in ("lead_off", "impedance"):
            channel = args[0]
            ohm = OPEN_CIRCUIT_OHM if action == "lead_off" else args[1]
            self.impedance_ohm[channel - 1] = ohm
            self._log(t, "impedance", channel=channel, ohm=ohm)
            self._check_electrodes(t)
        elif action == "over_current":
            self._fault(Fault.OVER_CURRENT, args[0], t)
        elif action in ("estop", "mark"):
            button = Button.ESTOP if action == "estop" else Button.MARK
            self._log(t, "button", button=button.name)
            self._emit(ButtonPressed, t, button=int(button))
            if button == Button.ESTOP:
                self._fault(Fault.ESTOP, 0, t)
        elif action == "internal":
            self._fault(Fault.INTERNAL, 0, t)
        elif action == "reset":
            if self._session is not None:
                self._end_session(t, "reset")
            self._outbox.clear()
            self._pending.clear()
            self._boot(BootCause(args[0]) if args else BootCause.RESET, t)

    # -- internals: time --------------------------------------------------------------

    def _now(self) -> int:
        return round(self.clock.now() * _US)

    def _boot(self, cause: BootCause, now: int) -> None:
        self._boot_us = now
        self._done_until = now
        self._decoder = Decoder(gap_s=round(INTER_BYTE_GAP_S * _US))
        self._outbox = bytearray()
        self._pending = []
        self._event_seq = 0
        self._replies = OrderedDict()
        self._ended = deque(maxlen=ENDED_SESSIONS)
        self._ended_floor = 0
        self._configs = {}
        self._state = State.IDLE
        self._session = None
        self._session_actions = []
        self._faults = 0
        self._fault_channel = 0
        self._last_rx = None
        self._logged_levels = [0] * self.config.channels
        self._log(now, "boot", cause=BootCause(cause).name)
        self._emit(Booted, now, cause=int(cause))
        self._flush_events()

    def _timed(self) -> tuple[int, int, Callable[[int], None]] | None:
        """The earliest thing time will do, (t_us, priority, action), at or after
        the instant everything before was done (``_done_until``)."""
        since = self._done_until
        candidates: list[tuple[int, int, Callable[[int], None]]] = []
        if self._scheduled:
            candidates.append(
                (self._scheduled[0][0], 2, partial(self._run_action, self._scheduled))
            )
        s = self._session
        if s is not None:
            candidates.append((s.deadline_us, 0, self._complete))
            if self._last_rx is not None:
                candidates.append((self._last_rx + s.watchdog_us, 1, self._watchdog))
            if self._session_actions:
                candidates.append(
                    (
                        self._session_actions[0][0],
                        2,
                        partial(self._run_action, self._session_actions),
                    )
                )
            if not s.ramping_down:
                owed = [ch.reached_at() for ch in s.channels.values() if ch.report_reached]
                if not s.ramp_done:
                    owed.append(max(ch.reached_at() for ch in s.channels.values()))
                if owed:
                    candidates.append((max(since, min(owed)), 3, self._slews_done))
                t_down = self._ramp_down_start(s, since)
                if t_down is not None:
                    candidates.append((t_down, 4, self._ramp_down))
            t_over = self._compliance_breach(s, since)
            if t_over is not None:
                candidates.append((t_over, 1, self._compliance_fault))
        return min(candidates, key=lambda c: (c[0], c[1])) if candidates else None

    def _advance(self, now: int) -> None:
        """Carry out every timed action due at or before ``now``, in time order,
        each at its own instant."""
        for _ in range(10_000):
            nxt = self._timed()
            if nxt is None or nxt[0] > now:
                self._done_until = max(self._done_until, now)
                return
            t, _, action = nxt
            self._done_until = max(self._done_until, t)
            action(t)
        raise RuntimeError("simulated unit: timed actions did not converge")

    def _ramp_down_start(self, s: _Session, since: int) -> int | None:
        """The first instant the end-ramp envelope reaches some channel's level."""
        key = ("down", s.version)
        if key not in s.cache:
            starts = []
            for ch in s.channels.values():

                def capped(t: int, ch: _Channel = ch) -> bool:
                    # exact: A * (D - t) / R <= level(t), without rounding the envelope
                    return ch.target * (s.deadline_us - t) <= ch.ramp_us * ch.level(t)

                t = _first_true(capped, ch.t0, s.deadline_us)
                if t is not None:
                    starts.append(t)
            s.cache[key] = min(starts, default=None)
        first = s.cache[key]
        return None if first is None else max(first, since)

    def _compliance_limit_ua(self, channel: int) -> int:
        return self.config.compliance_mv * 1000 // max(1, self.impedance_ohm[channel - 1])

    def _compliance_breach(self, s: _Session, since: int) -> int | None:
        """When output x impedance first exceeds the compliance voltage."""
        key = ("compliance", s.version, tuple(self.impedance_ohm))
        if key not in s.cache:
            times = []
            for ch in s.channels.values():
                limit = self._compliance_limit_ua(ch.number)
                if ch.output(ch.t0, s.deadline_us) > limit:
                    times.append(ch.t0)
                elif ch.setpoint > limit and ch.setpoint >= ch.start:

                    def over(t: int, ch: _Channel = ch, limit: int = limit) -> bool:
                        return ch.output(t, s.deadline_us) > limit

                    t = _first_true(over, ch.t0, min(ch.reached_at(), s.deadline_us))
                    if t is not None:
                        times.append(t)
            s.cache[key] = min(times, default=None)
        first = s.cache[key]
        return None if first is None else max(first, since)

    # -- internals: timed actions -------------------------------------------------------

    def _slews_done(self, t: int) -> None:
        s = self._session
        assert s is not None
        for ch in sorted(s.channels.values(), key=lambda c: c.number):
            if ch.report_reached and ch.reached_at() <= t:
                ch.report_reached = False
                self._emit(AmplitudeReached, t, channel=ch.number, amplitude_ua=ch.setpoint)
        if not s.ramp_done and all(ch.reached_at() <= t for ch in s.channels.values()):
            s.ramp_done = True
            self._emit(RampDone, t)
            self._set_state(State.RUNNING, t)

    def _ramp_down(self, t: int) -> None:
        s = self._session
        assert s is not None
        s.ramping_down = True
        s.ramp_done = True
        for ch in s.channels.values():
            ch.report_reached = False
        self._emit(RampDownStarted, t, remaining_ms=_ceil_div(s.deadline_us - t, 1000))
        self._set_state(State.RAMPING_DOWN, t)

    def _complete(self, t: int) -> None:
        s = self._session
        assert s is not None
        delivered = (t - s.start_us) // 1000
        self._end_session(t, "completed")
        self._emit(Completed, t, session_id=s.id, delivered_ms=delivered)
        self._set_state(State.IDLE, t)

    def _watchdog(self, t: int) -> None:
        assert self._last_rx is not None
        late_ms = (self._now() - t) / 1000
        self._log(t, "watchdog", last_frame=self._last_rx / _US, late_ms=late_ms)
        self._fault(Fault.WATCHDOG, 0, t)

    def _compliance_fault(self, t: int) -> None:
        s = self._session
        assert s is not None
        for ch in sorted(s.channels.values(), key=lambda c: c.number):
            if ch.output(t, s.deadline_us) > self._compliance_limit_ua(ch.number):
                self._fault(Fault.OVER_CURRENT, ch.number, t)
                return

    def _run_action(self, queue: list[tuple[int, str, tuple[int, ...]]], t: int) -> None:
        _, action, args = queue.pop(0)
        self._log(t, "injected", action=action, args=list(args))
        self._act(action, args, t)

    def _check_channel(self, channel: int) -> None:
        if not 1 <= channel <= self.config.channels:
            raise ValueError(f"channel {channel} does not exist (1..{self.config.channels})")

    def _check_electrodes(self, now: int) -> None:
        s = self._session
        if s is None:
            return
        for number in sorted(s.channels):
            if self.impedance_ohm[number - 1] > self.config.lead_off_ohm:
                self._fault(Fault.LEAD_OFF, number, now)
                return

    # -- internals: state changes --------------------------------------------------------

    def _set_state(self, state: State, t: int) -> None:
        if state != self._state:
            self._log(t, "state", previous=self._state.name, state=state.name)
            self._state = state

    def _end_session(self, t: int, why: str) -> None:
        """Output off now (at ``t``); the session can never resume."""
        s = self._session
        assert s is not None
        self._session = None
        self._session_actions = []
        self._remember_ended(s.id)
        if self._last_rx is not None:
            s.max_gap_us = max(s.max_gap_us, t - max(self._last_rx, s.start_us))
        self._log(
            t,
            "output_off",
            session_id=s.id,
            reason=why,
            delivered_ms=(t - s.start_us) // 1000,
            max_frame_gap_ms=s.max_gap_us / 1000,
        )
        self._log_levels(t)

    def _remember_ended(self, session_id: int) -> None:
        """PROTOCOL.md 10: the last ENDED_SESSIONS ids exactly; an id that leaves the
        list raises the floor, at or below which every START is refused as ended."""
        if len(self._ended) == ENDED_SESSIONS:
            self._ended_floor = max(self._ended_floor, self._ended[0])
        self._ended.append(session_id)

    def _is_ended(self, session_id: int) -> bool:
        return session_id <= self._ended_floor or session_id in self._ended

    def _fault(self, fault: Fault, channel: int, t: int) -> None:
        s = self._session
        first = self._faults == 0
        self._faults |= 1 << (fault - 1)
        if first:
            self._fault_channel = channel
        self._log(t, "fault", fault=Fault(fault).name, channel=channel)
        session_id = s.id if s is not None else 0
        if s is not None:
            delivered = (t - s.start_us) // 1000
            self._end_session(t, f"fault:{Fault(fault).name}")
            self._emit(FaultRaised, t, session_id=session_id, fault=int(fault), channel=channel)
            self._emit(
                Stopped,
                t,
                session_id=session_id,
                reason=int(StopReason.FAULT),
                delivered_ms=delivered,
            )
        else:
            self._emit(FaultRaised, t, session_id=session_id, fault=int(fault), channel=channel)
        self._set_state(State.FAULT, t)

    # -- internals: frames ---------------------------------------------------------------

    def _bad_frame(self, err: FrameError, now: int) -> None:
        """PROTOCOL.md 3.4: a good-CRC STOP always stops and is ACKed; other
        requests that fail a check after the CRC get a NACK; the rest is dropped."""
        self._log(now, "rejected", reason=err.reason)
        if err.kind != Kind.REQUEST or err.seq is None or err.msg_type is None:
            return  # header not trustworthy, or not a request: drop silently
        if err.msg_type == MessageType.STOP:
            self._stop(int(StopReason.UNSPECIFIED), now)  # never lost to a format error
            self._outbox += encode(Ack(seq=err.seq, request_type=err.msg_type, state=self._state))
            return
        error = _REJECTION_ERRORS.get(err.reason)
        if error is None:
            return  # length: checks 1-5 failed, the header is not trustworthy
        field = Field.VERSION if err.reason == "version" else Field.NONE
        nack = Nack(
            seq=err.seq,
            request_type=err.msg_type,
            error=error,
            field=field,
            channel=0,
            state=self._state,
        )
        self._outbox += encode(nack)

    def _request(self, message: Message, now: int) -> None:
        remembered = isinstance(message, _REMEMBERED)
        if remembered:
            cached = self._replies.get(message.seq)
            if cached is not None and cached[0] == message:
                # a copy: not carried out again; the remembered answer, state as now
                self._outbox += encode(replace(cached[1], state=self._state))
                return
        try:
            reply = self._handle(message, now)
        except Refused as refusal:
            reply = Nack(
                request_type=int(message.TYPE),
                error=refusal.error,
                field=refusal.field,
                channel=refusal.channel,
                state=self._state,
            )
        reply = replace(reply, seq=message.seq)
        if remembered:
            assert isinstance(reply, Ack | Nack)
            self._replies[message.seq] = (message, reply)
            self._replies.move_to_end(message.seq)
            while len(self._replies) > REPLY_CACHE:
                self._replies.popitem(last=False)
        self._outbox += encode(reply)

    def _emit(self, cls: type[Event], t: int, **fields: Any) -> None:
        fields.setdefault("session_id", self.session_id)
        event = cls(seq=self._event_seq, time_ms=self._time_ms(t), **fields)
        self._event_seq = (self._event_seq + 1) & 0xFFFF
        self._pending.append(event)

    def _time_ms(self, t: int) -> int:
        """The unit's clock on the wire: whole ms since boot, from clock_start_ms,
        wrapping at 2^32 (PROTOCOL.md 5.2)."""
        return ((t - self._boot_us) // 1000 + self.config.clock_start_ms) & 0xFFFFFFFF

    def _flush_events(self) -> None:
        for event in self._pending:
            self._outbox += encode(event)
        self._pending.clear()

    def _log(self, t: int, kind: str, **data: Any) -> None:
        entry = LogEntry(t / _US, kind, data)
        self.log.append(entry)
        for listener in self.listeners:
            listener(entry)

    def _log_levels(self, t: int) -> None:
        s = self._session
        for number in range(1, self.config.channels + 1):
            ua = s.channels[number].output(t, s.deadline_us) if s and number in s.channels else 0
            if ua != self._logged_levels[number - 1]:
                self._logged_levels[number - 1] = ua
                self._log(t, "level", channel=number, ua=ua)

    # -- request handlers (PROTOCOL.md section 6.1) ---------------------------------------

    def _handle(self, message: Message, now: int) -> Message:
        if isinstance(message, Hello):
            return self._hello(message)
        if isinstance(message, ConfigureChannel):
            return self._configure(message)
        if isinstance(message, Start):
            return self._start(message, now)
        if isinstance(message, SetAmplitude):
            return self._set_amplitude(message, now)
        if isinstance(message, Heartbeat):
            return self._heartbeat(message)
        if isinstance(message, Stop):
            self._stop(message.reason, now)
            return self._ack(message)
        if isinstance(message, GetStatus):
            return self._status(now)
        if isinstance(message, ClearFault):
            if self._state == State.FAULT:
                self._faults = 0
                self._fault_channel = 0
                self._log(now, "fault_cleared")
                self._set_state(State.IDLE, now)
            return self._ack(message)
        raise Refused(ErrorCode.UNKNOWN_TYPE)

    def _ack(self, message: Message) -> Ack:
        return Ack(request_type=int(message.TYPE), state=self._state)

    def _hello(self, m: Hello) -> Message:
        if m.min_version < 1 or m.min_version > m.max_version:
            raise Refused(ErrorCode.OUT_OF_RANGE, Field.VERSION)
        if not m.min_version <= 1 <= m.max_version:
            raise Refused(ErrorCode.UNSUPPORTED_VERSION, Field.VERSION)
        return self.config.device_info()

    def _refuse_unless_idle(self) -> None:
        if self._state == State.FAULT:
            raise Refused(ErrorCode.FAULT_LATCHED)
        if self._state != State.IDLE:
            raise Refused(ErrorCode.BAD_STATE)

    def _configure(self, m: ConfigureChannel) -> Message:
        self._refuse_unless_idle()
        c = self.config
        ch = m.channel

        def refuse(f: Field) -> Refused:
            return Refused(ErrorCode.OUT_OF_RANGE, f, ch if 1 <= ch <= c.channels else 0)

        if not 1 <= ch <= c.channels:
            raise refuse(Field.CHANNEL)
        if not c.waveforms & (1 << m.waveform):
            raise refuse(Field.WAVEFORM)
        if not c.modes & (1 << m.mode):
            raise refuse(Field.MODE)
        if not c.frequency_min_dhz <= m.frequency_dhz <= c.frequency_max_dhz:
            raise refuse(Field.FREQUENCY)
        if not c.pulse_width_min_us <= m.pulse_width_us <= c.pulse_width_max_us:
            raise refuse(Field.PULSE_WIDTH)
        a = m.amplitude_ua
        if not c.amplitude_step_ua <= a <= c.amplitude_max_ua or a % c.amplitude_step_ua:
            raise refuse(Field.AMPLITUDE)
        alt, switch = m.alt_frequency_dhz, m.switch_ms
        if m.mode == Mode.CONTINUOUS:
            if alt:
                raise refuse(Field.ALT_FREQUENCY)
            if switch:
                raise refuse(Field.SWITCH_PERIOD)
        elif m.mode == Mode.DENSE_DISPERSE:
            if not c.frequency_min_dhz <= alt <= c.frequency_max_dhz or alt == m.frequency_dhz:
                raise refuse(Field.ALT_FREQUENCY)
            if not 100 <= switch <= 60_000:
                raise refuse(Field.SWITCH_PERIOD)
        else:  # BURST: alt is the burst rate, switch the burst length
            if not c.frequency_min_dhz <= alt < m.frequency_dhz:
                raise refuse(Field.ALT_FREQUENCY)
            if (
                not 1 <= switch <= 60_000
                or switch * alt >= 10_000
                or switch * m.frequency_dhz < 10_000
            ):
                raise refuse(Field.SWITCH_PERIOD)
        fastest = max(m.frequency_dhz, alt) if m.mode == Mode.DENSE_DISPERSE else m.frequency_dhz
        if 2 * m.pulse_width_us * fastest >= 10_000_000:  # the two phases of a pulse overlap
            raise refuse(Field.PULSE_WIDTH)
        self._configs[ch] = m
        return Ack(request_type=int(m.TYPE), state=self._state)

    def _start(self, m: Start, now: int) -> Message:
        s = self._session
        if s is not None and m.session_id == s.id:
            if replace(m, seq=0) == replace(s.start, seq=0):
                return self._ack(m)  # a retransmission (PROTOCOL.md 10): no second effect
            raise Refused(ErrorCode.BAD_STATE)  # another dwell, ramp, ... for it: not done
        self._refuse_unless_idle()
        c = self.config
        if m.session_id == 0:
            raise Refused(ErrorCode.OUT_OF_RANGE, Field.SESSION_ID)
        if self._is_ended(m.session_id):
            raise Refused(ErrorCode.SESSION_ENDED, Field.SESSION_ID)
        if m.channel_mask == 0 or m.channel_mask >> c.channels:
            raise Refused(ErrorCode.OUT_OF_RANGE, Field.CHANNEL_MASK)
        numbers = [n for n in range(1, c.channels + 1) if m.channel_mask & (1 << (n - 1))]
        for n in numbers:
            if n not in self._configs:
                raise Refused(ErrorCode.NOT_CONFIGURED, Field.CHANNEL, n)
        if not c.dwell_min_ms <= m.dwell_ms <= c.dwell_max_ms:
            raise Refused(ErrorCode.OUT_OF_RANGE, Field.DWELL)
        if not c.watchdog_min_ms <= m.watchdog_ms <= c.watchdog_max_ms:
            raise Refused(ErrorCode.OUT_OF_RANGE, Field.WATCHDOG)
        if m.ramp_ms > c.ramp_max_ms or 2 * m.ramp_ms > m.dwell_ms:
            raise Refused(ErrorCode.OUT_OF_RANGE, Field.RAMP)
        for n in numbers:
            if self._configs[n].amplitude_ua * 1000 > c.slew_max_ua_per_s * m.ramp_ms:
                raise Refused(ErrorCode.OUT_OF_RANGE, Field.RAMP, n)
        for n in numbers:
            if self.impedance_ohm[n - 1] > c.lead_off_ohm:
                raise Refused(ErrorCode.LEAD_OFF, Field.CHANNEL, n)
        ramp_us = m.ramp_ms * 1000
        channels = {n: _Channel(n, self._configs[n].amplitude_ua, ramp_us, now) for n in numbers}
        self._session = _Session(m, now, channels)
        self._last_rx = now  # START arms the watchdog (PROTOCOL.md 9.1)
        self._session_actions = sorted(
            ((now + offset, action, args) for offset, action, args in self._per_session),
            key=lambda a: a[0],
        )
        self._log(now, "output_on", session_id=m.session_id, dwell_ms=m.dwell_ms, channels=numbers)
        self._set_state(State.RAMPING_UP, now)
        self._emit(OutputStarted, now, dwell_ms=m.dwell_ms, channel_mask=m.channel_mask)
        return Ack(request_type=int(m.TYPE), state=self._state)

    def _set_amplitude(self, m: SetAmplitude, now: int) -> Message:
        s = self._session
        if self._state == State.FAULT:
            raise Refused(ErrorCode.FAULT_LATCHED)
        if s is None or m.session_id != s.id:
            raise Refused(ErrorCode.NO_SESSION, Field.SESSION_ID)
        if self._state == State.RAMPING_DOWN:
            raise Refused(ErrorCode.BAD_STATE)
        if m.channel not in s.channels:
            known = 1 <= m.channel <= self.config.channels
            raise Refused(ErrorCode.OUT_OF_RANGE, Field.CHANNEL, m.channel if known else 0)
        c = self.config
        if m.amplitude_ua > c.amplitude_max_ua or m.amplitude_ua % c.amplitude_step_ua:
            raise Refused(ErrorCode.OUT_OF_RANGE, Field.AMPLITUDE, m.channel)
        ch = s.channels[m.channel]
        ch.retarget(now, m.amplitude_ua)
        ch.report_reached = True
        s.version += 1
        s.cache.clear()
        self._log(now, "setpoint", channel=m.channel, ua=m.amplitude_ua)
        return Ack(request_type=int(m.TYPE), state=self._state)

    def _heartbeat(self, m: Heartbeat) -> Message:
        if m.session_id == 0 or (self._session is not None and m.session_id == self._session.id):
            return Ack(request_type=int(m.TYPE), state=self._state)
        if self._state == State.FAULT:
            raise Refused(ErrorCode.FAULT_LATCHED)
        raise Refused(ErrorCode.NO_SESSION, Field.SESSION_ID)

    def _stop(self, reason: int, now: int) -> None:
        s = self._session
        if s is None:
            return
        delivered = (now - s.start_us) // 1000
        self._end_session(now, "stop")
        self._emit(Stopped, now, session_id=s.id, reason=reason, delivered_ms=delivered)
        self._set_state(State.IDLE, now)

    def _status(self, now: int) -> Status:
        s = self._session
        channels = []
        for n in range(1, self.config.channels + 1):
            ch = s.channels.get(n) if s else None
            measured = s is not None and ch is not None
            channels.append(
                ChannelStatus(
                    amplitude_ua=ch.output(now, s.deadline_us) if s and ch else 0,
                    setpoint_ua=ch.setpoint if ch else 0,
                    impedance_ohm=min(self.impedance_ohm[n - 1], 0xFFFFFFFE)
                    if measured
                    else IMPEDANCE_UNKNOWN,
                )
            )
        return Status(
            state=self._state,
            session_id=s.id if s else (self._ended[-1] if self._ended else 0),
            time_ms=self._time_ms(now),
            elapsed_ms=(now - s.start_us) // 1000 if s else 0,
            # rounded up, so that elapsed_ms + remaining_ms == dwell_ms
            remaining_ms=_ceil_div(max(0, s.deadline_us - now), 1000) if s else 0,
            faults=self._faults,
            fault_channel=self._fault_channel,
            channels=tuple(channels),
        )


__all__ = ["OPEN_CIRCUIT_OHM", "LogEntry", "SimulatedUnit", "UnitConfig"]
