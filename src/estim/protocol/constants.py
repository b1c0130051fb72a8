"""Numbers fixed by firmware_protocol/PROTOCOL.md. Change them only with the spec."""

from __future__ import annotations

from enum import IntEnum

PROTOCOL_VERSION = 1
HEADER_SIZE = 8
CRC_SIZE = 4
MAX_PAYLOAD = 240
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
#: COBS adds one byte per 254; a maximal frame (252 bytes) needs exactly one.
MAX_ENCODED = MAX_FRAME + 1
#: A partial frame is dropped after this much silence (the Modbus RTU principle).
INTER_BYTE_GAP_S = 0.050
MAX_STRING = 32
MAX_CHANNELS = 8


class Kind(IntEnum):
    REQUEST = 1
    RESPONSE = 2
    EVENT = 3


class MessageType(IntEnum):
    # requests, host -> device
    HELLO = 0x01
    CONFIGURE_CHANNEL = 0x02
    START = 0x03
    SET_AMPLITUDE = 0x04
    HEARTBEAT = 0x05
    STOP = 0x06
    GET_STATUS = 0x07
    CLEAR_FAULT = 0x08
    # responses, device -> host
    ACK = 0x40
    NACK = 0x41
    DEVICE_INFO = 0x42
    STATUS = 0x43
    # events, device -> host, unsolicited
    OUTPUT_STARTED = 0x80
    RAMP_DONE = 0x81
    AMPLITUDE_REACHED = 0x82
    RAMP_DOWN_STARTED = 0x83
    COMPLETED = 0x84
    STOPPED = 0x85
    FAULT = 0x86
    BUTTON_PRESSED = 0x87
    BOOTED = 0x88


class State(IntEnum):
    """Device states (PROTOCOL.md section 6). Output may be non-zero only in
    RAMPING_UP, RUNNING and RAMPING_DOWN."""

    IDLE = 0
    RAMPING_UP = 1
    RUNNING = 2
    RAMPING_DOWN = 3
    FAULT = 4


OUTPUT_STATES = frozenset({State.RAMPING_UP, State.RUNNING, State.RAMPING_DOWN})


class Waveform(IntEnum):
    BIPHASIC_SYMMETRIC = 0
    BIPHASIC_ASYMMETRIC = 1
    MONOPHASIC = 2


class Mode(IntEnum):
    CONTINUOUS = 0
    BURST = 1
    DENSE_DISPERSE = 2


class StopReason(IntEnum):
    """Why output stopped. A STOP request carries one; a STOPPED event echoes it,
    or says FAULT. A device must stop on a STOP whatever its reason byte says."""

    #: STOPPED only: the STOP failed a format check, so its reason could not be read
    UNSPECIFIED = 0
    OPERATOR = 1
    DWELL_ELAPSED = 2
    HOST_SHUTDOWN = 3
    HOST_ERROR = 4
    FAULT = 16


class Fault(IntEnum):
    """Latched faults. In STATUS.faults, fault ``f`` is bit ``f - 1``."""

    LEAD_OFF = 1
    OVER_CURRENT = 2
    WATCHDOG = 3
    ESTOP = 4
    INTERNAL = 5


class ErrorCode(IntEnum):
    """NACK error codes (PROTOCOL.md section 8)."""

    UNKNOWN_TYPE = 1
    BAD_PAYLOAD = 2
    UNSUPPORTED_VERSION = 3
    BAD_STATE = 4
    OUT_OF_RANGE = 5
    NOT_CONFIGURED = 6
    SESSION_ENDED = 7
    NO_SESSION = 8
    FAULT_LATCHED = 9
    LEAD_OFF = 10
    BAD_FLAGS = 11
    INTERNAL = 12


class Field(IntEnum):
    """Which request field a NACK refers to."""

    NONE = 0
    CHANNEL = 1
    WAVEFORM = 2
    MODE = 3
    FREQUENCY = 4
    PULSE_WIDTH = 5
    AMPLITUDE = 6
    ALT_FREQUENCY = 7
    SWITCH_PERIOD = 8
    SESSION_ID = 9
    DWELL = 10
    RAMP = 11
    WATCHDOG = 12
    CHANNEL_MASK = 13
    VERSION = 14


class Button(IntEnum):
    ESTOP = 1
    MARK = 2


class BootCause(IntEnum):
    POWER_ON = 1
    RESET = 2
    INTERNAL_WATCHDOG = 3


#: DEVICE_INFO.flags bit 0: the unit is a simulator, not hardware.
FLAG_SIMULATED = 0x0001
