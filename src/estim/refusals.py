"""A unit's refusal (NACK) as a message a clinician can act on (PROTOCOL.md 8.1)."""

from __future__ import annotations

from estim.errors import DeviceError
from estim.protocol import ErrorCode, Field, Nack, State

_FIELD_TEXT = {
    Field.CHANNEL: "channel",
    Field.WAVEFORM: "waveform",
    Field.MODE: "mode",
    Field.FREQUENCY: "frequency",
    Field.PULSE_WIDTH: "pulse width",
    Field.AMPLITUDE: "amplitude",
    Field.ALT_FREQUENCY: "second frequency",
    Field.SWITCH_PERIOD: "switch period",
    Field.SESSION_ID: "session id",
    Field.DWELL: "dwell",
    Field.RAMP: "ramp",
    Field.WATCHDOG: "watchdog period",
    Field.CHANNEL_MASK: "channel selection",
    Field.VERSION: "protocol version",
}


def describe_refusal(nack: Nack, what: str) -> str:
    code, field, ch = nack.error, nack.field, nack.channel
    on = f" on channel {ch}" if ch else ""
    name = (
        _FIELD_TEXT.get(Field(field), f"field {field}")
        if field in Field._value2member_map_
        else f"field {field}"
    )
    texts = {
        ErrorCode.UNKNOWN_TYPE: "the unit does not support this command; update estim or the unit's firmware",
        ErrorCode.BAD_PAYLOAD: "the unit could not read the command (a software fault; please report it)",
        ErrorCode.UNSUPPORTED_VERSION: "the unit speaks a protocol version this software does not",
        ErrorCode.BAD_STATE: "the unit is busy with a session; stop it first",
        ErrorCode.OUT_OF_RANGE: f"the {name}{on} is outside the unit's range",
        ErrorCode.NOT_CONFIGURED: f"channel {ch} is not configured",
        ErrorCode.SESSION_ENDED: "that session has already ended on the unit; start a new one",
        ErrorCode.NO_SESSION: "the session is no longer running on the unit",
        ErrorCode.FAULT_LATCHED: "the unit has a fault latched; check the electrodes, then clear the fault",
        ErrorCode.LEAD_OFF: f"channel {ch}: electrode not connected; check the clip and the needle",
        ErrorCode.BAD_FLAGS: "the unit could not read the command (a software fault; please report it)",
        ErrorCode.INTERNAL: "the unit reported an internal error; do not use it",
    }
    if code == ErrorCode.BAD_STATE and nack.state == State.RAMPING_DOWN:
        texts[ErrorCode.BAD_STATE] = (
            "the unit is ramping down at the end of the dwell; nothing can change now"
        )
    text = texts.get(ErrorCode(code)) if code in ErrorCode._value2member_map_ else None
    return f"{what} refused: {text or f'the unit refused with unknown error code {code}'}"


def device_error(nack: Nack, what: str) -> DeviceError:
    """The typed error for a refusal of ``what`` ("start", "channel 1 settings", ...)."""
    return DeviceError(
        describe_refusal(nack, what), code=nack.error, field=nack.field, channel=nack.channel
    )
