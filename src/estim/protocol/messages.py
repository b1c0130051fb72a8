"""The message catalogue of PROTOCOL.md section 5, as frozen dataclasses.

Each wire field is declared with ``wire(codec, unit, doc)``; the field order here
is the byte order on the wire. No floating point crosses the wire: amplitude is
in microamps, frequency in tenths of a hertz, pulse width in microseconds and time
in milliseconds. ``seq`` is the header's sequence number, not a payload field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .constants import (
    MAX_CHANNELS,
    BootCause,
    Button,
    ErrorCode,
    Fault,
    Field,
    Kind,
    MessageType,
    Mode,
    State,
    StopReason,
    Waveform,
)
from .fields import U8, U16, U32, CodeU8, EnumU8, Records, Text, wire

_REQUEST_TYPE = CodeU8(MessageType)
_STOP_REASON = CodeU8(StopReason)


@dataclass(frozen=True, kw_only=True)
class Message:
    """Base of every message. ``seq`` is the frame header's sequence number."""

    TYPE: ClassVar[MessageType]
    KIND: ClassVar[Kind]

    seq: int = 0


# --- requests: host -> device ---------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Hello(Message):
    """Identify the unit and agree a protocol version. Always framed as version 1."""

    TYPE = MessageType.HELLO
    KIND = Kind.REQUEST
    min_version: int = wire(U8, "", "lowest protocol version the host speaks (>= 1)")
    max_version: int = wire(U8, "", "highest protocol version the host speaks (>= min_version)")


@dataclass(frozen=True, kw_only=True)
class ConfigureChannel(Message):
    """Set one channel's waveform and target amplitude (allowed in IDLE only)."""

    TYPE = MessageType.CONFIGURE_CHANNEL
    KIND = Kind.REQUEST
    channel: int = wire(U8, "", "channel number, 1..channel_count")
    waveform: Waveform = wire(EnumU8(Waveform), "", "pulse shape")
    mode: Mode = wire(EnumU8(Mode), "", "continuous, burst or dense-disperse")
    frequency_dhz: int = wire(U16, "0.1 Hz", "pulse rate (burst: rate inside a burst)")
    pulse_width_us: int = wire(U16, "us", "width of one phase")
    amplitude_ua: int = wire(U32, "uA", "target peak amplitude, a multiple of amplitude_step_ua")
    alt_frequency_dhz: int = wire(
        U16, "0.1 Hz", "dense-disperse: second rate; burst: burst repetition rate; else 0"
    )
    switch_ms: int = wire(
        U16, "ms", "dense-disperse: time on each rate; burst: burst length; else 0"
    )


@dataclass(frozen=True, kw_only=True)
class Start(Message):
    """Start output on the configured channels of ``channel_mask``."""

    TYPE = MessageType.START
    KIND = Kind.REQUEST
    session_id: int = wire(U32, "", "random, non-zero; never reused by the host")
    dwell_ms: int = wire(U32, "ms", "output is zero at start + dwell_ms")
    ramp_ms: int = wire(
        U32, "ms", "start ramp length, and end ramp length at the planned amplitude"
    )
    watchdog_ms: int = wire(
        U16, "ms", "output off if no HEARTBEAT naming the session arrives for this long"
    )
    channel_mask: int = wire(U8, "", "bit n-1 set = channel n takes part")


@dataclass(frozen=True, kw_only=True)
class SetAmplitude(Message):
    """Change one channel's amplitude during a session (slewed, never a jump)."""

    TYPE = MessageType.SET_AMPLITUDE
    KIND = Kind.REQUEST
    session_id: int = wire(U32, "", "the live session")
    channel: int = wire(U8, "", "channel number, in the session's channel_mask")
    amplitude_ua: int = wire(U32, "uA", "new peak amplitude, a multiple of amplitude_step_ua")


@dataclass(frozen=True, kw_only=True)
class Heartbeat(Message):
    """Naming the live session: feed its watchdog and confirm it is live; 0: a keep-alive."""

    TYPE = MessageType.HEARTBEAT
    KIND = Kind.REQUEST
    session_id: int = wire(
        U32, "", "the live session (feeds its watchdog), or 0 (a keep-alive that does not)"
    )


@dataclass(frozen=True, kw_only=True)
class Stop(Message):
    """Output off now, no ramp. Never refused, whatever the reason byte says."""

    TYPE = MessageType.STOP
    KIND = Kind.REQUEST
    reason: int = wire(_STOP_REASON, "", "why; any value stops, unknown ones too")


@dataclass(frozen=True, kw_only=True)
class GetStatus(Message):
    """Ask for a STATUS response."""

    TYPE = MessageType.GET_STATUS
    KIND = Kind.REQUEST


@dataclass(frozen=True, kw_only=True)
class ClearFault(Message):
    """Clear latched faults (FAULT -> IDLE). Output stays off."""

    TYPE = MessageType.CLEAR_FAULT
    KIND = Kind.REQUEST


# --- responses: device -> host --------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Ack(Message):
    """The request with this seq was carried out."""

    TYPE = MessageType.ACK
    KIND = Kind.RESPONSE
    request_type: int = wire(_REQUEST_TYPE, "", "type of the request acknowledged")
    state: State = wire(EnumU8(State), "", "device state after the request")


@dataclass(frozen=True, kw_only=True)
class Nack(Message):
    """The request with this seq was refused and had no effect."""

    TYPE = MessageType.NACK
    KIND = Kind.RESPONSE
    request_type: int = wire(_REQUEST_TYPE, "", "type of the request refused (may be unknown)")
    error: int = wire(CodeU8(ErrorCode), "", "why; a host treats unknown codes as a refusal too")
    field: int = wire(CodeU8(Field), "", "which request field, or NONE")
    channel: int = wire(U8, "", "which channel, or 0")
    state: State = wire(EnumU8(State), "", "device state (unchanged by the request)")


@dataclass(frozen=True, kw_only=True)
class DeviceInfo(Message):
    """The unit's identity, its protocol version and its limits (answer to HELLO)."""

    TYPE = MessageType.DEVICE_INFO
    KIND = Kind.RESPONSE
    protocol_version: int = wire(U8, "", "version agreed for every later frame")
    channel_count: int = wire(U8, "", f"1..{MAX_CHANNELS}")
    flags: int = wire(U16, "", "bit 0: simulated unit; other bits 0")
    waveforms: int = wire(U8, "", "bit w set = Waveform w supported")
    modes: int = wire(U8, "", "bit m set = Mode m supported")
    amplitude_max_ua: int = wire(U32, "uA", "highest amplitude")
    amplitude_step_ua: int = wire(U32, "uA", "amplitude resolution, at most 1% of the maximum")
    frequency_min_dhz: int = wire(U16, "0.1 Hz", "lowest pulse rate")
    frequency_max_dhz: int = wire(U16, "0.1 Hz", "highest pulse rate")
    pulse_width_min_us: int = wire(U16, "us", "narrowest phase")
    pulse_width_max_us: int = wire(U16, "us", "widest phase")
    slew_max_ua_per_s: int = wire(U32, "uA/s", "fastest amplitude change")
    watchdog_min_ms: int = wire(U16, "ms", "shortest watchdog period accepted")
    watchdog_max_ms: int = wire(U16, "ms", "longest watchdog period accepted")
    dwell_min_ms: int = wire(U32, "ms", "shortest dwell accepted")
    dwell_max_ms: int = wire(U32, "ms", "longest dwell accepted")
    ramp_max_ms: int = wire(U32, "ms", "longest ramp accepted")
    lead_off_ohm: int = wire(U32, "ohm", "impedance above which a channel is open (lead-off)")
    model: str = wire(Text(), "", "model name")
    serial_number: str = wire(Text(), "", "serial number")
    firmware: str = wire(Text(), "", "firmware version")


@dataclass(frozen=True, kw_only=True)
class ChannelStatus:
    """One channel's entry in STATUS."""

    amplitude_ua: int = wire(U32, "uA", "output now; 0 outside the live session")
    setpoint_ua: int = wire(
        U32, "uA", "amplitude the channel is slewing toward; 0 outside the live session"
    )
    impedance_ohm: int = wire(
        U32,
        "ohm",
        "electrode impedance of a channel of the live session, whatever its output; "
        "0xFFFFFFFF otherwise (not measured)",
    )


IMPEDANCE_UNKNOWN = 0xFFFFFFFF


@dataclass(frozen=True, kw_only=True)
class Status(Message):
    """The device's state now (answer to GET_STATUS)."""

    TYPE = MessageType.STATUS
    KIND = Kind.RESPONSE
    state: State = wire(EnumU8(State), "", "device state")
    session_id: int = wire(U32, "", "live or last session, 0 if none since boot")
    time_ms: int = wire(U32, "ms", "device uptime (wraps at 2^32)")
    elapsed_ms: int = wire(U32, "ms", "time since output started, rounded down; 0 if output is off")
    remaining_ms: int = wire(
        U32, "ms", "time until the dwell deadline, rounded up; 0 if output is off"
    )
    faults: int = wire(U8, "", "latched faults, bit f-1 = Fault f")
    fault_channel: int = wire(U8, "", "channel of the first latched fault, or 0")
    channels: tuple[ChannelStatus, ...] = wire(
        Records(ChannelStatus, MAX_CHANNELS), "", "one entry per channel, channel 1 first"
    )


# --- events: device -> host, unsolicited ----------------------------------
# Every event starts with session_id and time_ms; seq is the device's own event
# counter, so a host can see that it missed one.


@dataclass(frozen=True, kw_only=True)
class Event(Message):
    KIND = Kind.EVENT
    session_id: int = wire(U32, "", "session the event belongs to, 0 if none")
    time_ms: int = wire(U32, "ms", "device uptime when it happened")


@dataclass(frozen=True, kw_only=True)
class OutputStarted(Event):
    """START accepted; output is on and ramping up."""

    TYPE = MessageType.OUTPUT_STARTED
    dwell_ms: int = wire(U32, "ms", "the dwell the unit will enforce")
    channel_mask: int = wire(U8, "", "channels taking part")


@dataclass(frozen=True, kw_only=True)
class RampDone(Event):
    """Every channel has reached its target after the start ramp."""

    TYPE = MessageType.RAMP_DONE


@dataclass(frozen=True, kw_only=True)
class AmplitudeReached(Event):
    """A channel finished slewing to a new amplitude set during the session."""

    TYPE = MessageType.AMPLITUDE_REACHED
    channel: int = wire(U8, "", "channel number")
    amplitude_ua: int = wire(U32, "uA", "amplitude reached")


@dataclass(frozen=True, kw_only=True)
class RampDownStarted(Event):
    """The end ramp began; output reaches zero at the dwell deadline."""

    TYPE = MessageType.RAMP_DOWN_STARTED
    remaining_ms: int = wire(U32, "ms", "time until the deadline")


@dataclass(frozen=True, kw_only=True)
class Completed(Event):
    """The dwell deadline was reached; output is zero."""

    TYPE = MessageType.COMPLETED
    delivered_ms: int = wire(U32, "ms", "time from output start to output off")


@dataclass(frozen=True, kw_only=True)
class Stopped(Event):
    """Output stopped before the deadline (STOP, or a fault)."""

    TYPE = MessageType.STOPPED
    reason: int = wire(_STOP_REASON, "", "the STOP's reason byte, or FAULT")
    delivered_ms: int = wire(U32, "ms", "time from output start to output off")


@dataclass(frozen=True, kw_only=True)
class FaultRaised(Event):
    """A fault latched; all output is off."""

    TYPE = MessageType.FAULT
    fault: int = wire(CodeU8(Fault), "", "what; a host treats unknown codes as a fault too")
    channel: int = wire(
        U8, "", "channel concerned, or 0 for the whole unit (WATCHDOG, ESTOP, INTERNAL)"
    )


@dataclass(frozen=True, kw_only=True)
class ButtonPressed(Event):
    """A button on the unit was pressed."""

    TYPE = MessageType.BUTTON_PRESSED
    button: int = wire(CodeU8(Button), "", "which button")


@dataclass(frozen=True, kw_only=True)
class Booted(Event):
    """The unit (re)started: idle, output zero, nothing resumed."""

    TYPE = MessageType.BOOTED
    cause: int = wire(CodeU8(BootCause), "", "why the unit started")


MESSAGE_CLASSES: dict[MessageType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        ConfigureChannel,
        Start,
        SetAmplitude,
        Heartbeat,
        Stop,
        GetStatus,
        ClearFault,
        Ack,
        Nack,
        DeviceInfo,
        Status,
        OutputStarted,
        RampDone,
        AmplitudeReached,
        RampDownStarted,
        Completed,
        Stopped,
        FaultRaised,
        ButtonPressed,
        Booted,
    )
}
