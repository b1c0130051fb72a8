"""The driver: ``estim.connect(url) -> Device``, a unit over any pyserial URL.

``connect`` opens the port with ``serial.serial_for_url`` (so ``/dev/ttyUSB0``,
``COM3``, ``socket://``, ``rfc2217://``, ``spy://`` and ``sim://`` all work),
says HELLO, checks the protocol version and returns a ``Device`` holding the
unit's ``UnitInfo``. Leaving a ``with`` block stops output and closes the port.

Every operation is one request and its answer; a NACK becomes a ``DeviceError``
whose message says what to do. Values are checked against the unit's reported
limits before anything is sent. Policy (dwell, heartbeats, ramps) lives in
``estim.session``, not here.
"""

from __future__ import annotations

import errno
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import serial

import estim.sim  # noqa: F401  (registers sim:// with pyserial)
from estim.clock import REAL_CLOCK, Clock, ManualClock
from estim.errors import (
    DeviceError,
    LinkError,
    LinkLost,
    NoAnswer,
    OutputLimitError,
    PortBusy,
    PortNotFound,
    RemoteProtocolError,
    VersionMismatch,
)
from estim.info import MODES, WAVEFORMS, UnitInfo, UnitStatus
from estim.limits import Limits
from estim.link import Link, Notification
from estim.protocol import (
    OUTPUT_STATES,
    PROTOCOL_VERSION,
    Ack,
    ClearFault,
    ConfigureChannel,
    DeviceInfo,
    ErrorCode,
    Field,
    GetStatus,
    Heartbeat,
    Hello,
    Message,
    Nack,
    SetAmplitude,
    Start,
    State,
    Status,
    StopReason,
)

if TYPE_CHECKING:
    from estim.plan import ChannelPlan, SessionPlan
    from estim.session import Session

log = logging.getLogger("estim.device")

# --- NACK -> a message a clinician can act on (PROTOCOL.md 8.1) ------------------------

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
    text = texts.get(ErrorCode(code)) if code in ErrorCode._value2member_map_ else None
    return f"{what} refused: {text or f'the unit refused with unknown error code {code}'}"


def _check(answer: Message, what: str) -> Message:
    if isinstance(answer, Nack):
        raise DeviceError(
            describe_refusal(answer, what),
            code=answer.error,
            field=answer.field,
            channel=answer.channel,
        )
    return answer


def channel_message(plan: ChannelPlan, info: UnitInfo) -> ConfigureChannel:
    """The CONFIGURE_CHANNEL for ``plan``; raises OutputLimitError if the unit would refuse it."""
    problems = Limits(info).channel_problems(plan)
    if problems:
        raise OutputLimitError(problems[0])
    return ConfigureChannel(
        channel=plan.channel,
        waveform=WAVEFORMS[plan.waveform],
        mode=MODES[plan.mode],
        frequency_dhz=round(plan.frequency_hz * 10),
        pulse_width_us=plan.pulse_width_us,
        amplitude_ua=round(plan.amplitude_ma * 1000),
        alt_frequency_dhz=round((plan.alt_frequency_hz or 0) * 10),
        switch_ms=round((plan.switch_s or 0) * 1000),
    )


class Device:
    """A connected unit. Thread-safe: any thread may call ``stop()``."""

    def __init__(self, link: Link, info: UnitInfo, url: str) -> None:
        self.link = link
        self.info = info
        self.url = url
        self.clock = link.clock
        self._closed = False
        self._close_lock = threading.Lock()
        #: the session id of an output found running at connect and stopped, if any
        self.stopped_orphan: int | None = None
        #: live sessions on this unit; closing the device stops them first
        self._sessions: set[Session] = set()

    def __repr__(self) -> str:
        return f"<Device {self.info.model} {self.info.serial_number} on {self.url}>"

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- operations ---------------------------------------------------------------------

    def configure(self, plan: ChannelPlan) -> None:
        """Set one channel's waveform and target amplitude (the unit must be idle)."""
        _check(
            self.link.request(channel_message(plan, self.info)), f"channel {plan.channel} settings"
        )

    def start_output(
        self,
        *,
        session_id: int,
        dwell_s: float,
        ramp_s: float,
        watchdog_s: float,
        channels: list[int],
    ) -> State:
        """START: output begins on the configured ``channels``. Prefer ``start(plan)``,
        which runs the whole session; this is the bare protocol operation."""
        for name, value in (("dwell", dwell_s), ("ramp", ramp_s), ("watchdog", watchdog_s)):
            if not math.isfinite(value) or value < 0:
                raise OutputLimitError(f"{name} {value!r} is not a duration")
        bad = [c for c in channels if not 1 <= c <= self.info.channels]
        if not channels or bad:
            raise OutputLimitError(
                f"channels {channels} are not 1..{self.info.channels} of this unit"
            )
        mask = sum(1 << (c - 1) for c in set(channels))
        message = Start(
            session_id=session_id,
            dwell_ms=round(dwell_s * 1000),
            ramp_ms=round(ramp_s * 1000),
            watchdog_ms=round(watchdog_s * 1000),
            channel_mask=mask,
        )
        answer = _check(self.link.request(message), "start")
        assert isinstance(answer, Ack)
        return answer.state

    def set_amplitude(self, channel: int, ma: float, *, session_id: int) -> State:
        """Change a channel's amplitude in the live session (the unit slews to it)."""
        if not math.isfinite(ma) or ma < 0 or ma > self.info.amplitude_max_ma:
            raise OutputLimitError(
                f"amplitude {ma!r} mA is outside 0-{self.info.amplitude_max_ma:g} mA of this unit"
            )
        ua = round(ma * 1000)
        step = round(self.info.amplitude_step_ma * 1000)
        if ua % step:
            raise OutputLimitError(
                f"amplitude {ma:g} mA is not a multiple of the unit's step {self.info.amplitude_step_ma:g} mA"
            )
        message = SetAmplitude(session_id=session_id, channel=channel, amplitude_ua=ua)
        answer = _check(self.link.request(message), f"amplitude on channel {channel}")
        assert isinstance(answer, Ack)
        return answer.state

    def heartbeat(self, session_id: int = 0) -> State:
        """Feed the unit's watchdog; with a session id, also confirm it is still live."""
        answer = _check(self.link.request(Heartbeat(session_id=session_id)), "heartbeat")
        assert isinstance(answer, Ack)
        return answer.state

    def send_heartbeat(self, session_id: int, on_answer: Callable[[Message], None]) -> None:
        """HEARTBEAT without waiting for its answer (which ``on_answer`` gets, on the
        reader thread). For a loop that beats every 100 ms and watches
        ``link.last_rx``: it need not wake for each ACK."""
        self.link.send(Heartbeat(session_id=session_id), on_answer)

    def stop(
        self, reason: StopReason | int = StopReason.OPERATOR, *, give_up_after: float = 0.5
    ) -> State:
        """Output off now. Never waits behind another request; resent until the unit
        acknowledges; raises ``LinkLost`` at once if the link is gone (the unit's
        watchdog then turns output off within its period)."""
        answer = self.link.stop(int(reason), give_up_after=give_up_after)
        assert isinstance(answer, Ack | Nack)
        return answer.state

    def status(self) -> UnitStatus:
        answer = _check(self.link.request(GetStatus()), "status")
        if not isinstance(answer, Status):
            raise RemoteProtocolError(f"the unit answered GET_STATUS with {answer.TYPE.name}")
        return UnitStatus.from_message(answer)

    def clear_fault(self) -> State:
        answer = _check(self.link.request(ClearFault()), "clear fault")
        assert isinstance(answer, Ack)
        return answer.state

    def subscribe(self, callback: Callable[[Notification], None]) -> Callable[[], None]:
        """Events (``estim.protocol.Event`` subclasses), ``EventGap`` and ``LinkDown``,
        in order, on the reader thread. Returns an unsubscribe function."""
        return self.link.subscribe(callback)

    def start(self, plan: SessionPlan, **kwargs: Any) -> Session:
        """Run ``plan`` as a session; returns at once. See ``estim.session.Session``."""
        from estim.session import Session

        return Session.begin(self, plan, **kwargs)

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop any live session and any output (best effort), then close the port.
        Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        for session in list(self._sessions):
            session.stop(StopReason.HOST_SHUTDOWN, "the device was closed")
            try:
                session.wait(timeout=5.0)
            except TimeoutError:
                log.warning("session %s did not end within 5 s of closing the device", session.id)
        try:
            if self.link.lost is None:
                self.stop(StopReason.HOST_SHUTDOWN)
        except LinkError:
            pass  # the unit's watchdog is the backstop
        finally:
            self.link.close()


# --- connecting ---------------------------------------------------------------------------


def _open_error(url: str, err: BaseException) -> LinkError:
    code = getattr(err, "errno", None)
    text = str(err)
    if code in (errno.EBUSY, errno.EAGAIN) or "exclusively lock" in text or "busy" in text.lower():
        return PortBusy(f"port {url} is busy: another program has it open; close it and try again")
    if code == errno.ENOENT or "No such file" in text:
        return PortNotFound(f"port {url} does not exist; {ports_hint()}")
    if code == errno.EACCES:
        return LinkError(f"no permission to open {url}; add your user to the 'dialout' group")
    if "protocol" in text and "not known" in text:
        return PortNotFound(f"{url}: unknown URL scheme; {ports_hint()}")
    if code == errno.ECONNREFUSED or "Connection refused" in text:
        return PortNotFound(f"nothing is listening at {url}")
    return LinkError(f"cannot open {url}: {text}")


def connect(
    url: str,
    *,
    clock: Clock | None = None,
    baudrate: int = 115200,
    response_timeout: float = 0.1,
    retries: int = 2,
) -> Device:
    """Open ``url``, identify the unit, and return a ``Device``.

    Raises ``PortNotFound``, ``PortBusy``, ``NoAnswer`` (nothing that speaks the
    estim protocol answered), ``VersionMismatch`` or ``LinkError``.
    For ``sim://`` the unit's clock is used unless ``clock`` is given. Each request
    waits ``response_timeout`` seconds for its answer and is resent ``retries`` times.
    """
    if not isinstance(url, str) or not url.strip():
        raise PortNotFound(f"no port given; {ports_hint()}")
    url = url.strip()
    is_sim = url.lower().startswith("sim://")
    try:
        port = serial.serial_for_url(
            url,
            baudrate=baudrate,
            timeout=None if is_sim else 0.1,
            write_timeout=None if is_sim else 1.0,
            exclusive=None if is_sim or "://" in url else True,
        )
    except (serial.SerialException, OSError, ValueError) as err:
        raise _open_error(url, err) from None
    if not is_sim and callable(getattr(port, "cancel_read", None)):
        port.timeout = None  # the reader blocks until a byte; close() cancels the read
    port_clock: Clock | None = getattr(port, "sim_clock", None)
    if isinstance(clock, ManualClock) and port_clock is not clock:
        port.close()
        raise LinkError(
            f"a manual clock can only drive a simulated unit that shares it (not {url})"
        )
    chosen: Clock = clock or port_clock or REAL_CLOCK
    link = Link(port, chosen, name=url, response_timeout=response_timeout, retries=retries)
    try:
        info = _hello(link, url)
        device = Device(link, info, url)
        _stop_orphaned_output(device)
    except BaseException:
        link.close()
        raise
    return device


def _stop_orphaned_output(device: Device) -> None:
    """A unit found delivering output has lost its host: whoever could open the port
    now is not running that session. A reconnect means output zero (SAFETY.md 4)."""
    status = device.status()
    if status.state in OUTPUT_STATES:
        log.warning(
            "the unit on %s was delivering output for session %08x with no host; stopping it",
            device.url,
            status.session_id,
        )
        device.stop(StopReason.HOST_SHUTDOWN)
        device.stopped_orphan = status.session_id


def _hello(link: Link, url: str) -> UnitInfo:
    link.send_raw(b"\x00")  # ends any partial frame the unit holds
    try:
        answer = link.request(Hello(min_version=PROTOCOL_VERSION, max_version=PROTOCOL_VERSION))
    except LinkLost:
        if link.stats.rejected_frames:
            raise NoAnswer(
                f"{url} answered, but not in the estim protocol ({link.stats.rejected_frames} bad "
                "frames); is this the right port?"
            ) from None
        raise NoAnswer(
            f"no estim unit answered on {url}; check the cable, the power and the port"
        ) from None
    if isinstance(answer, Nack):
        if answer.error == ErrorCode.UNSUPPORTED_VERSION:
            raise VersionMismatch(
                f"the unit on {url} speaks a protocol version this software (version "
                f"{PROTOCOL_VERSION}) does not; update estim or the unit's firmware"
            )
        raise RemoteProtocolError(describe_refusal(answer, "HELLO"))
    if not isinstance(answer, DeviceInfo):
        raise RemoteProtocolError(f"the unit on {url} answered HELLO with {answer.TYPE.name}")
    if answer.protocol_version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"the unit on {url} chose protocol version {answer.protocol_version}; this software speaks "
            f"{PROTOCOL_VERSION}; update estim or the unit's firmware"
        )
    return UnitInfo.from_message(answer)


# --- ports -------------------------------------------------------------------------------

#: USB vendor/product ids of units known to speak this protocol. Small on purpose:
#: add a unit here only once it passes the conformance vectors.
KNOWN_UNITS: dict[tuple[int, int], str] = {
    (0x1209, 0xE571): "estim reference unit (pid.codes test id)",
}


@dataclass(frozen=True)
class PortInfo:
    device: str
    description: str
    hwid: str
    vid: int | None
    pid: int | None
    #: the name of the known unit, if the USB ids match one
    known_unit: str | None

    @property
    def looks_like_estim(self) -> bool:
        return self.known_unit is not None


def list_ports() -> list[PortInfo]:
    """Serial ports on this machine, known estim units marked. ``sim://`` is always
    available too (a simulated unit), but is not listed."""
    from serial.tools import list_ports as serial_list_ports

    out = []
    for p in sorted(serial_list_ports.comports(), key=lambda p: p.device):
        ids = (p.vid, p.pid) if p.vid is not None and p.pid is not None else None
        out.append(
            PortInfo(
                device=p.device,
                description=p.description or "",
                hwid=p.hwid or "",
                vid=p.vid,
                pid=p.pid,
                known_unit=KNOWN_UNITS.get(ids) if ids else None,
            )
        )
    return out


def ports_hint() -> str:
    ports = [p.device for p in list_ports()]
    listed = ", ".join(ports) if ports else "none found"
    return f"serial ports here: {listed}; sim:// is a simulated unit"
