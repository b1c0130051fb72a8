"""The threaded driver against the simulated unit (sim://, manual clock) and a
scripted port: connecting, each operation, refusals, retries, link loss, STOP
jumping the queue, the exact bytes, and clear errors at connect."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import serial

import estim
from estim.clock import REAL_CLOCK, ManualClock
from estim.core import HostCore
from estim.device import Device, connect, list_ports
from estim.errors import (
    DeviceError,
    LinkLost,
    LinkTimeout,
    NoAnswer,
    OutputLimitError,
    PortBusy,
    PortNotFound,
    VersionMismatch,
)
from estim.info import UnitInfo
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.protocol import (
    Ack,
    DeviceInfo,
    ErrorCode,
    Fault,
    Field,
    Heartbeat,
    Hello,
    MessageType,
    Nack,
    State,
    StopReason,
    encode,
)
from estim.refusals import describe_refusal
from estim.sim import FaultWindow, LinkFaults, SimulatedUnit, UnitConfig, serve
from estim.start_sequence import _configure

from . import vectors
from .scripted import ScriptedPort

CH1 = ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=12)


def plan(dwell: float = 600, **changes: Any) -> SessionPlan:
    return SessionPlan(**{"dwell": dwell, "ramp": 5, "channels": [CH1], **changes})


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "estim.db") as j:
        yield j


# --- handshake and operations ----------------------------------------------------------


def test_handshake(estim_url: str, estim_clock: ManualClock) -> None:
    with connect(estim_url) as device:
        assert device.clock is estim_clock
        info = device.info
        assert (info.model, info.channels, info.simulated, info.protocol_version) == (
            "estim-sim",
            2,
            True,
            1,
        )
        assert (info.amplitude_max_ma, info.amplitude_step_ma, info.slew_max_ma_per_s) == (
            50,
            0.1,
            10,
        )
        assert (info.dwell_min_s, info.dwell_max_s, info.watchdog_min_s) == (60, 600, 0.2)
        assert info.waveforms == {"biphasic_symmetric", "biphasic_asymmetric", "monophasic"}
        assert device.limits.unit is info


def test_status_stop_and_clear_fault(
    estim_url: str, estim_unit: SimulatedUnit, estim_clock: ManualClock, journal: Journal
) -> None:
    with connect(estim_url) as device:
        session = device.start(plan(), journal=journal)
        estim_clock.advance(6)
        status = device.status()
        assert (status.state, status.session_id) == (State.RUNNING, session.session_id)
        assert status.channels[0].amplitude_ma == 12.0
        assert status.channels[0].impedance_ohm == 2000
        assert status.channels[1].impedance_ohm is None
        assert device.stop(StopReason.OPERATOR) == State.IDLE
        assert estim_unit.output_ua(1) == 0
        assert session.wait(timeout=5).outcome == "stopped"
        assert device.clear_fault() == State.IDLE


def test_leaving_the_block_stops_output_and_closes(
    estim_url: str, estim_unit: SimulatedUnit, estim_clock: ManualClock, journal: Journal
) -> None:
    with connect(estim_url) as device:
        session = device.start(plan(), journal=journal)
        estim_clock.advance(0.6)
        assert estim_unit.output_on
    assert not estim_unit.output_on
    assert estim_unit.events("output_off")[-1].data["reason"] == "stop"
    assert estim_unit.faults == set()
    assert session.record().outcome == "stopped"
    with connect(estim_url):  # the port is free again
        pass


# --- refusals -------------------------------------------------------------------------------


def test_a_refusal_is_a_typed_error_with_an_actionable_message(
    estim_url: str, estim_unit: SimulatedUnit, journal: Journal
) -> None:
    estim_unit.pull_electrode(1)
    with connect(estim_url) as device, pytest.raises(DeviceError) as caught:
        device.start(plan(), journal=journal)
    assert (caught.value.code, caught.value.field, caught.value.channel) == (
        ErrorCode.LEAD_OFF,
        Field.CHANNEL,
        1,
    )
    assert "channel 1: electrode not connected; check the clip and the needle" in str(caught.value)


@pytest.mark.parametrize(
    ("code", "field", "channel", "text"),
    [
        (ErrorCode.OUT_OF_RANGE, Field.DWELL, 0, "the dwell is outside the unit's range"),
        (ErrorCode.OUT_OF_RANGE, Field.AMPLITUDE, 2, "the amplitude on channel 2 is outside"),
        (ErrorCode.NOT_CONFIGURED, Field.CHANNEL, 2, "channel 2 is not configured"),
        (ErrorCode.NO_SESSION, Field.SESSION_ID, 0, "no longer running"),
        (ErrorCode.FAULT_LATCHED, Field.NONE, 0, "fault latched; check the electrodes"),
        (200, 99, 0, "unknown error code 200"),
    ],
)
def test_every_refusal_reads_as_what_to_do(code: int, field: int, channel: int, text: str) -> None:
    nack = Nack(seq=1, request_type=3, error=code, field=field, channel=channel, state=State.IDLE)
    assert text in describe_refusal(nack, "start")


def test_out_of_limit_plans_are_refused_before_anything_is_sent(
    estim_url: str, estim_unit: SimulatedUnit, journal: Journal
) -> None:
    with connect(estim_url) as device:
        for bad in (
            CH1.model_copy(update={"amplitude_ma": 50.1}),
            CH1.model_copy(update={"frequency_hz": 0.5}),
            CH1.model_copy(update={"pulse_width_us": 600}),
            CH1.model_copy(update={"channel": 3}),
        ):
            with pytest.raises(OutputLimitError):
                device.start(plan(channels=[bad]), journal=journal)
    assert estim_unit.requests_seen[MessageType.CONFIGURE_CHANNEL] == 0
    assert journal.query() == []


def test_a_clinic_limit_given_at_connect_holds_for_every_plan_and_change(
    estim_url: str, estim_unit: SimulatedUnit, estim_clock: ManualClock, journal: Journal
) -> None:
    five = CH1.model_copy(update={"amplitude_ma": 5})
    with connect(estim_url, clinic=estim.ClinicLimits(amplitude_max_ma=6)) as device:
        with pytest.raises(OutputLimitError, match="clinic's maximum 6 mA"):
            device.start(plan(), journal=journal)
        session = device.start(plan(channels=[five]), journal=journal)
        estim_clock.advance(6)
        with pytest.raises(OutputLimitError, match="clinic's maximum 6 mA"):
            session.set_amplitude(1, 6.1)
        session.set_amplitude(1, 6.0)
        session.stop()
    assert estim_unit.requests_seen[MessageType.SET_AMPLITUDE] == 1


# --- retries and link loss -------------------------------------------------------------------


def test_retries_through_a_lossy_link_never_start_twice(tmp_path: Path) -> None:
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with (
        Journal(tmp_path / "j.db") as journal,
        serve(unit) as url,
        connect(f"{url}?drop=0.005&corrupt=0.005&seed=11", retries=8) as device,
    ):
        sessions = []
        for _ in range(30):
            session = device.start(plan(60), journal=journal)
            clock.advance(0.2)
            session.stop()
            sessions.append(session.wait(timeout=10))
        assert device.stats.retries > 0
    starts = unit.events("output_on")
    assert [e.data["session_id"] for e in starts] == [int(s.id, 16) for s in sessions]


def test_no_answer_after_retries_is_a_timeout_not_a_lost_link() -> None:
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url, connect(f"{url}?cut_at=1:100") as device:
        clock.advance(1.0)
        t = clock.now()
        with pytest.raises(LinkTimeout, match="after 3 attempts of 100 ms"):
            device.status()
        assert clock.now() - t == pytest.approx(0.3)
        assert device.lost is None


def test_a_pulled_cable_is_link_lost_at_once_and_the_unit_watchdog_acts(
    estim_url: str, estim_unit: SimulatedUnit, estim_clock: ManualClock, journal: Journal
) -> None:
    with connect(estim_url) as device:
        session = device.start(plan(), journal=journal)
        estim_clock.advance(1)
        device.port.sim_connection.unplug()
        record = session.wait(timeout=5)
        assert record.outcome == "link_lost"
        assert device.lost is not None
        with pytest.raises(LinkLost):
            device.status()
        with pytest.raises(LinkLost):
            device.stop()
    estim_clock.advance(1.0)
    assert estim_unit.faults == {Fault.WATCHDOG}
    assert not estim_unit.output_on


def test_a_lost_event_is_recorded_as_a_gap(
    estim_url: str, estim_clock: ManualClock, journal: Journal
) -> None:
    with connect(estim_url) as device:
        conn = device.port.sim_connection
        now = estim_clock.now()
        conn.d2h.windows = (FaultWindow(now + 4.95, now + 5.05, LinkFaults(drop=1.0)),)
        session = device.start(plan(), journal=journal)  # RAMP_DONE at 5.0 s is lost
        estim_clock.advance(7)
        session.stop()
        record = session.wait(timeout=5)
    gaps = [e for e in record.events if e.kind == "events_missed"]
    assert len(gaps) == 1
    assert device.stats.missed_events == 1
    assert record.outcome == "stopped"


# --- STOP jumps the queue (scripted port) ------------------------------------------------


def scripted_device(
    first_seq: int = 0x2A, response_timeout: float = 5.0
) -> tuple[Device, ScriptedPort]:
    port = ScriptedPort()
    core = HostCore(name="scripted", first_seq=first_seq, response_timeout=response_timeout)
    device = Device(port, REAL_CLOCK, url="scripted", core=core)  # type: ignore[arg-type]
    device.info = UnitInfo.from_message(UnitConfig().device_info())
    return device, port


def close_scripted(device: Device, port: ScriptedPort) -> None:
    closer = threading.Thread(target=device.close)
    closer.start()
    stop = port.next_request()
    port.answer(encode(Ack(seq=stop.seq, request_type=MessageType.STOP, state=State.IDLE)))
    closer.join(5)


def test_stop_from_another_thread_while_a_request_is_in_flight() -> None:
    device, port = scripted_device()
    results: list[Any] = []
    status = threading.Thread(target=lambda: results.append(device.clear_fault()))
    status.start()
    first = port.next_request()
    assert first.TYPE == MessageType.CLEAR_FAULT  # in flight, not answered
    stopper = threading.Thread(target=lambda: results.append(device.stop(StopReason.OPERATOR)))
    stopper.start()
    stop = port.next_request()  # written without waiting for the first one's answer
    assert stop.TYPE == MessageType.STOP
    port.answer(encode(Ack(seq=stop.seq, request_type=MessageType.STOP, state=State.IDLE)))
    stopper.join(5)
    assert results == [State.IDLE]  # STOP finished while the other still waits
    port.answer(encode(Ack(seq=first.seq, request_type=MessageType.CLEAR_FAULT, state=State.IDLE)))
    status.join(5)
    assert results == [State.IDLE, State.IDLE]
    close_scripted(device, port)


def test_stop_is_resent_with_the_same_bytes_until_acknowledged_then_given_up() -> None:
    device, port = scripted_device(first_seq=1, response_timeout=0.02)
    try:
        with pytest.raises(LinkLost, match="STOP was not acknowledged"):
            device.stop(StopReason.OPERATOR, give_up_after=0.1)
        sent = []
        while not port.writes.empty():
            sent.append(port.writes.get())
        assert len(sent) >= 4
        assert len(set(sent)) == 1  # the same bytes, the same seq, every time
        assert device.lost is not None
    finally:
        device.close()


def test_a_port_failure_wakes_every_waiter_with_link_lost() -> None:
    device, port = scripted_device()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            device.status()
        except LinkLost as err:
            errors.append(err)

    thread = threading.Thread(target=call)
    thread.start()
    port.next_request()
    port.break_("device reports readiness to read but returned no data")
    thread.join(5)
    assert "returned no data" in str(errors[0])
    device.close()


# --- exact bytes of each request (pymeasure's expected_protocol) ------------------------------

BY_NAME = {v["name"]: v for v in vectors.load("requests")}


def _exchange(operation: Any, vector_name: str, answer: Any) -> Any:
    vector = BY_NAME[vector_name]
    device, port = scripted_device(first_seq=vector["message"]["seq"])
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(operation(device)))
    thread.start()
    assert port.next_write().hex() == vector["hex"]
    port.answer(encode(answer(vector["message"]["seq"])))
    thread.join(5)
    close_scripted(device, port)
    return result[0] if result else None


def ack(kind: MessageType, state: State = State.IDLE) -> Any:
    return lambda seq: Ack(seq=seq, request_type=kind, state=state)


def test_stop_and_clear_fault_write_the_golden_bytes() -> None:
    _exchange(lambda d: d.stop(StopReason.OPERATOR), "STOP typical", ack(MessageType.STOP))
    _exchange(lambda d: d.clear_fault(), "CLEAR_FAULT typical", ack(MessageType.CLEAR_FAULT))


def test_status_writes_the_golden_bytes() -> None:
    from estim.protocol import ChannelStatus, Status

    def answer(seq: int) -> Status:
        return Status(
            seq=seq,
            state=State.IDLE,
            session_id=0,
            time_ms=1,
            elapsed_ms=0,
            remaining_ms=0,
            faults=0,
            fault_channel=0,
            channels=(ChannelStatus(amplitude_ua=0, setpoint_ua=0, impedance_ohm=0xFFFFFFFF),),
        )

    status = _exchange(lambda d: d.status(), "GET_STATUS typical", answer)
    assert status.channels[0].impedance_ohm is None


def test_a_channel_plan_becomes_the_golden_configure_bytes() -> None:
    message = _configure(CH1)
    assert (
        encode(message.__class__(**{**message.__dict__, "seq": 0x2A})).hex()
        == (BY_NAME["CONFIGURE_CHANNEL typical"]["hex"])
    )


# --- clear errors at connect -------------------------------------------------------------------


def test_a_port_that_does_not_exist_lists_the_ports_that_do() -> None:
    with pytest.raises(
        PortNotFound, match=r"port /dev/ttyNOPE0 does not exist; serial ports here: .*sim://"
    ):
        connect("/dev/ttyNOPE0")


def test_an_unknown_url_scheme() -> None:
    with pytest.raises(PortNotFound, match="unknown URL scheme"):
        connect("bogus://x")


def test_a_busy_port(estim_url: str) -> None:
    with connect(estim_url), pytest.raises(PortBusy, match="busy"):
        connect(estim_url)


def test_a_busy_real_port_is_reported_as_busy() -> None:
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        holder = serial.Serial(path, exclusive=True)
        try:
            with pytest.raises(PortBusy, match=f"port {path} is busy"):
                connect(path)
        finally:
            holder.close()
    finally:
        os.close(master)
        os.close(slave)


def test_nothing_answering_is_no_answer() -> None:
    master, slave = os.openpty()
    try:
        with pytest.raises(NoAnswer, match=f"no estim unit answered on {os.ttyname(slave)}"):
            connect(os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)


def test_a_device_answering_garbage_is_not_an_estim_unit() -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    stop = threading.Event()

    def chatter() -> None:  # a "device" that prints text lines, as a GPS or a modem would
        while not stop.is_set():
            try:
                os.write(master, b"$GPGGA,123519,4807.038,N\r\n\x00")
            except OSError:
                return
            stop.wait(0.01)

    thread = threading.Thread(target=chatter)
    thread.start()
    try:
        with pytest.raises(NoAnswer, match="sends bytes, but no estim frame"):
            connect(path)
    finally:
        stop.set()
        thread.join()
        os.close(master)
        os.close(slave)


def test_a_unit_speaking_another_protocol_version() -> None:
    device, port = scripted_device(first_seq=5)
    errors: list[BaseException] = []

    def hello() -> None:
        try:
            device._hello()
        except VersionMismatch as err:
            errors.append(err)

    thread = threading.Thread(target=hello)
    thread.start()
    request = port.next_request()
    port.answer(
        encode(
            Nack(
                seq=request.seq,
                request_type=1,
                error=ErrorCode.UNSUPPORTED_VERSION,
                field=Field.VERSION,
                channel=0,
                state=State.IDLE,
            )
        )
    )
    thread.join(5)
    close_scripted(device, port)
    assert "speaks a protocol version this software (version 1) does not" in str(errors[0])


def test_a_manual_clock_cannot_drive_a_real_port() -> None:
    with pytest.raises(estim.LinkError, match="manual clock"):
        connect("sim://", clock=ManualClock())


def test_list_ports_returns_port_infos() -> None:
    assert all(p.device for p in list_ports())


def test_device_info_round_trips_through_unit_info() -> None:
    info = UnitInfo.from_message(UnitConfig().device_info())
    assert info.as_dict()["amplitude_max_ma"] == 50
    assert isinstance(UnitConfig().device_info(), DeviceInfo)


class _StarvedClock:
    """Real signals and threads, but ``now`` jumps 60 ms each time the port is
    asked what is waiting: a reader starved of CPU between two reads of bytes that
    were already there."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def signal(self) -> Any:
        return REAL_CLOCK.signal()

    def start_thread(self, target: Any, name: str) -> threading.Thread:
        return REAL_CLOCK.start_thread(target, name)

    def sleep(self, seconds: float) -> None:
        REAL_CLOCK.sleep(seconds)


class _OneByteThenRest(ScriptedPort):
    """Hands out each answer one byte first and the rest on the next read; the
    reader is starved for 60 ms between the two reads."""

    def __init__(self, clock: _StarvedClock) -> None:
        super().__init__()
        self.clock = clock
        self.split = True

    @property
    def in_waiting(self) -> int:
        if self.split:
            return 0
        self.clock.t += 0.060  # starved after the first byte; the rest was already there
        return super().in_waiting

    def read(self, size: int = 1) -> bytes:
        data = super().read(1 if self.split else size)
        if data:
            self.split = not self.split
        return data


def test_time_a_starved_reader_spends_between_reads_is_not_a_silence_on_the_line() -> None:
    clock = _StarvedClock()
    port = _OneByteThenRest(clock)
    core = HostCore(name="starved", first_seq=7, response_timeout=3600)
    device = Device(port, clock, url="starved", core=core)  # type: ignore[arg-type]
    try:
        result: list[Any] = []
        thread = threading.Thread(
            target=lambda: result.append(device._request(Heartbeat(session_id=0), "heartbeat"))
        )
        thread.start()
        request = port.next_request()
        port.answer(
            encode(Ack(seq=request.seq, request_type=MessageType.HEARTBEAT, state=State.IDLE))
        )
        thread.join(10)
        assert isinstance(result[0], Ack)
        assert device.stats.rejected_frames == 0
    finally:
        device._closed = True
        device._closing = True
        port.close()
        device._thread.join(5)


def test_connecting_to_a_unit_with_orphaned_output_stops_it(
    estim_url: str, estim_unit: SimulatedUnit, estim_clock: ManualClock, journal: Journal
) -> None:
    # A host died or gave up mid-session; whoever opens the port now cannot be the
    # one running that session: a reconnect means output zero (SAFETY.md 4).
    first = connect(estim_url)
    session = first.start(plan(), journal=journal)
    estim_clock.advance(0.3)
    first.port.sim_connection.unplug()  # the old host is gone without a STOP
    assert session.wait(timeout=5).outcome == "link_lost"
    first.close()
    assert estim_unit.output_on  # until its watchdog acts, the orphaned output goes on
    with connect(estim_url) as second:
        assert not estim_unit.output_on
        assert second.stopped_orphan == session.session_id
        assert estim_unit.events("output_off")[-1].data["reason"] == "stop"


def hello_in_thread(device: Device) -> tuple[threading.Thread, list[BaseException]]:
    """``device._hello()`` on a thread of its own (the test plays the unit); the
    ``NoAnswer`` it raises, if any, lands in the list."""
    errors: list[BaseException] = []

    def hello() -> None:
        try:
            device._hello()
        except NoAnswer as err:
            errors.append(err)

    thread = threading.Thread(target=hello)
    thread.start()
    return thread, errors


def test_connect_asks_hello_again_while_the_answers_arrive_damaged() -> None:
    # full lossy run: at drop=0.003 three damaged DEVICE_INFOs in a row failed a connect
    device, port = scripted_device(first_seq=5, response_timeout=0.05)
    device.info = None  # type: ignore[assignment]
    thread, errors = hello_in_thread(device)
    seqs = []
    for _ in range(3):
        request = port.next_request()
        seqs.append(request.seq)
        damaged = bytearray(encode(replace(UnitConfig().device_info(), seq=request.seq)))
        damaged[3] ^= 0xFF
        port.answer(bytes(damaged))
    again = port.next_request()
    assert isinstance(again, Hello)
    assert again.seq not in seqs  # a new request, not a fourth resend (PROTOCOL.md 9)
    port.answer(encode(replace(UnitConfig().device_info(), seq=again.seq)))
    thread.join(5)
    assert errors == []
    assert device.info is not None
    assert device.info.serial_number == UnitConfig().device_info().serial_number
    close_scripted(device, port)


def test_a_noisy_link_at_connect_says_the_frames_arrived_damaged() -> None:
    # issue 13: on main a noisy link read "not in the estim protocol; is this the right port?"
    from estim.protocol import RampDone

    device, port = scripted_device(first_seq=5, response_timeout=0.05)
    thread, errors = hello_in_thread(device)
    for attempt in range(3):
        request = port.next_request()
        good = encode(RampDone(seq=attempt, session_id=0, time_ms=0))  # the unit is there...
        damaged = bytearray(encode(Ack(seq=request.seq, request_type=1, state=State.IDLE)))
        damaged[3] ^= 0xFF  # ...but its answer arrives damaged
        port.answer(good + bytes(damaged))
    thread.join(5)
    device._closed = device._closing = True
    port.close()
    device._thread.join(5)
    assert "frames arrived damaged" in str(errors[0])
    assert "check the cable" in str(errors[0])
