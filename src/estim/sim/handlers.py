"""The simulated unit's request handlers (PROTOCOL.md section 6.1): each request
checked (5.1) and carried out, or refused with the NACK the spec gives; a frame
rejected after its CRC answered as 3.4 says; the answers PROTOCOL.md 10 remembers.
"""

from __future__ import annotations

from dataclasses import replace

from estim.protocol import (
    IMPEDANCE_UNKNOWN,
    Ack,
    ChannelStatus,
    ClearFault,
    ConfigureChannel,
    ErrorCode,
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
    SetAmplitude,
    Start,
    State,
    Status,
    Stop,
    Stopped,
    StopReason,
    encode,
)

from .model import (
    _REJECTION_ERRORS,
    _REMEMBERED,
    REPLY_CACHE,
    Refused,
    _ceil_div,
    _Channel,
    _Session,
)
from .unit_base import UnitBase


class RequestHandlers(UnitBase):
    """What the unit does with each request."""

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
