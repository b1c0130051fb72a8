"""Driving a SimulatedUnit directly, sans I/O, on a manual clock, with no threads.

The test thread plays both the host (sending requests, reading answers) and the
unit's CPU (calling ``poll`` at the unit's own deadlines), so every step happens at
an exact virtual instant and nothing depends on the machine's speed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from estim.clock import ManualClock
from estim.protocol import (
    Ack,
    ConfigureChannel,
    Decoder,
    Event,
    Heartbeat,
    Kind,
    Message,
    Mode,
    Nack,
    Start,
    Waveform,
    encode,
)
from estim.sim import SimulatedUnit, UnitConfig


def configure(
    channel: int = 1, amplitude_ua: int = 12_000, seq: int = 0, **changes: Any
) -> ConfigureChannel:
    fields: dict[str, Any] = {
        "channel": channel,
        "waveform": Waveform.BIPHASIC_SYMMETRIC,
        "mode": Mode.CONTINUOUS,
        "frequency_dhz": 20,
        "pulse_width_us": 250,
        "amplitude_ua": amplitude_ua,
        "alt_frequency_dhz": 0,
        "switch_ms": 0,
    }
    fields.update(changes)
    return ConfigureChannel(seq=seq, **fields)


def start(
    session_id: int = 0x5E55,
    dwell_ms: int = 600_000,
    ramp_ms: int = 5_000,
    seq: int = 0,
    **changes: Any,
) -> Start:
    fields: dict[str, Any] = {
        "session_id": session_id,
        "dwell_ms": dwell_ms,
        "ramp_ms": ramp_ms,
        "watchdog_ms": 500,
        "channel_mask": 1,
    }
    fields.update(changes)
    return Start(seq=seq, **fields)


class Harness:
    def __init__(self, config: UnitConfig | None = None, *, start_at: float = 100.0) -> None:
        self.clock = ManualClock(start_at)
        self.unit = SimulatedUnit(config, clock=self.clock)
        self.decoder = Decoder()
        self.seq = 0
        self.events: list[Event] = []
        self.responses: list[Message] = []
        self._collect()

    @property
    def now(self) -> float:
        return self.clock.now()

    def _collect(self) -> list[Message]:
        messages = self.decoder.feed(self.unit.read_output())
        for m in messages:
            if m.KIND == Kind.EVENT:
                assert isinstance(m, Event)
                self.events.append(m)
            else:
                self.responses.append(m)
        return messages

    def send_raw(self, data: bytes) -> list[Message]:
        self.unit.receive(data)
        return self._collect()

    def request(self, message: Message, *, seq: int | None = None) -> Message:
        """Send one request; return its answer (the response with its seq)."""
        if seq is None:
            seq, self.seq = self.seq, (self.seq + 1) & 0xFFFF
        wire = encode(replace(message, seq=seq))
        answers = [m for m in self.send_raw(wire) if m.KIND == Kind.RESPONSE and m.seq == seq]
        assert len(answers) == 1, f"expected one answer to {message}, got {answers}"
        return answers[0]

    def ok(self, message: Message) -> Ack:
        answer = self.request(message)
        assert isinstance(answer, Ack), f"{message} was refused: {answer}"
        return answer

    def refused(self, message: Message) -> Nack:
        answer = self.request(message)
        assert isinstance(answer, Nack), f"{message} was accepted: {answer}"
        return answer

    def start_session(self, *, channels: dict[int, int] | None = None, **start_fields: Any) -> int:
        channels = channels or {1: 12_000}
        mask = 0
        for ch, ua in channels.items():
            self.ok(configure(ch, ua))
            mask |= 1 << (ch - 1)
        start_fields.setdefault("channel_mask", mask)
        message = start(**start_fields)
        self.ok(message)
        return message.session_id

    def advance(
        self, seconds: float, *, heartbeat: float | None = None, session_id: int = 0
    ) -> None:
        """Let ``seconds`` pass, polling the unit at each of its deadlines, and
        sending a HEARTBEAT every ``heartbeat`` seconds if asked. Time is counted
        in whole microseconds, as the unit counts it."""

        def us(t: float) -> int:
            return round(t * 1_000_000)

        end = us(self.now + seconds)
        beat = None if heartbeat is None else us(heartbeat)
        next_beat = None if beat is None else us(self.now) + beat
        while True:
            times = [end]
            deadline = self.unit.next_deadline()
            if deadline is not None:
                times.append(us(deadline))
            if next_beat is not None:
                times.append(next_beat)
            step = min(times)
            self.clock.advance(max(0, step - us(self.now)) / 1_000_000)
            self.unit.poll()
            self._collect()
            if next_beat is not None and beat is not None and us(self.now) >= next_beat:
                self.request(Heartbeat(session_id=session_id))
                next_beat += beat
            if us(self.now) >= end:
                return

    def events_of(self, cls: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]
