"""The driver against the simulated unit (sim://, manual clock) and a scripted port."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import serial

import estim
from estim.clock import REAL_CLOCK, ManualClock
from estim.device import Device, channel_message, connect, list_ports
from estim.errors import (
    DeviceError,
    LinkLost,
    NoAnswer,
    OutputLimitError,
    PortBusy,
    PortNotFound,
    VersionMismatch,
)
from estim.info import UnitInfo
from estim.link import EventGap, Link, LinkDown
from estim.plan import ChannelPlan
from estim.protocol import (
    Ack,
    Completed,
    DeviceInfo,
    ErrorCode,
    Fault,
    Field,
    Heartbeat,
    MessageType,
    Nack,
    OutputStarted,
    RampDone,
    State,
    Stop,
    StopReason,
    decode,
    encode,
)
from estim.sim import FaultWindow, LinkFaults, SimulatedUnit, UnitConfig, serve

from . import vectors
from .scripted import ScriptedPort

CH1 = ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=12)


def start_one(device: Device, session_id: int = 7, dwell_s: float = 600, ramp_s: float = 5) -> None:
    device.configure(CH1)
    device.start_output(
        session_id=session_id, dwell_s=dwell_s, ramp_s=ramp_s, watchdog_s=0.5, channels=[1]
    )


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


def test_every_operation(
    estim_url: str, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    events: list[Any] = []
    with connect(estim_url) as device:
        device.subscribe(events.append)
        device.configure(CH1)
        state = device.start_output(
            session_id=7, dwell_s=600, ramp_s=5, watchdog_s=0.5, channels=[1]
        )
        assert state == State.RAMPING_UP
        for _ in range(60):  # 6 s of heartbeats
            estim_clock.advance(0.1)
            assert device.heartbeat(7) in (State.RAMPING_UP, State.RUNNING)
        assert device.set_amplitude(1, 14.0, session_id=7) == State.RUNNING
        status = device.status()
        assert (status.state, status.session_id) == (State.RUNNING, 7)
        assert status.channels[0].amplitude_ma == 12.0
        assert status.channels[0].setpoint_ma == 14.0
        assert status.channels[0].impedance_ohm == 2000
        assert status.channels[1].impedance_ohm is None
        assert device.stop(StopReason.OPERATOR) == State.IDLE
        assert estim_unit.output_ua(1) == 0
        assert device.clear_fault() == State.IDLE
    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["OutputStarted", "RampDone"]
    assert "Stopped" in kinds


def test_leaving_the_block_stops_output_and_closes(
    estim_url: str, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    with connect(estim_url) as device:
        start_one(device)
        estim_clock.advance(0.3)
        device.heartbeat(7)
        estim_clock.advance(0.3)
        assert estim_unit.output_on
    assert not estim_unit.output_on
    assert estim_unit.events("output_off")[-1].data["reason"] == "stop"
    assert estim_unit.faults == set()
    # the port is free again
    with connect(estim_url):
        pass


def test_events_arrive_in_order_as_typed_objects(estim_url: str, estim_clock: ManualClock) -> None:
    events: list[Any] = []
    with connect(estim_url) as device:
        device.subscribe(events.append)
        start_one(device, dwell_s=60, ramp_s=5)
        for i in range(610):
            estim_clock.advance(0.1)
            device.heartbeat(7 if i < 599 else 0)  # the session ends at 60 s
    assert [type(e) for e in events][:2] == [OutputStarted, RampDone]
    completed = [e for e in events if isinstance(e, Completed)]
    assert completed[0].delivered_ms == 60_000
    assert [e.seq for e in events] == sorted(e.seq for e in events)


# --- refusals ---------------------------------------------------------------------------------


def test_nack_becomes_a_typed_error_with_an_actionable_message(estim_url: str) -> None:
    with connect(estim_url) as device:
        device.configure(CH1)
        with pytest.raises(DeviceError) as caught:
            device.start_output(session_id=7, dwell_s=59, ramp_s=5, watchdog_s=0.5, channels=[1])
        assert (caught.value.code, caught.value.field) == (ErrorCode.OUT_OF_RANGE, Field.DWELL)
        assert "the dwell is outside the unit's range" in str(caught.value)
        with pytest.raises(DeviceError, match="no longer running"):
            device.heartbeat(12345)
        with pytest.raises(DeviceError, match="channel 2 is not configured"):
            device.start_output(session_id=8, dwell_s=60, ramp_s=5, watchdog_s=0.5, channels=[1, 2])


def test_lead_off_refusal_names_the_channel(estim_url: str, estim_unit: SimulatedUnit) -> None:
    estim_unit.pull_electrode(1)
    with connect(estim_url) as device:
        device.configure(CH1)
        with pytest.raises(DeviceError, match="channel 1: electrode not connected"):
            device.start_output(session_id=7, dwell_s=60, ramp_s=5, watchdog_s=0.5, channels=[1])


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (CH1.model_copy(update={"amplitude_ma": 50.1}), "above the unit's maximum 50 mA"),
        (
            CH1.model_copy(update={"amplitude_ma": 12.05}),
            "not a multiple of the unit's step 0.1 mA",
        ),
        (
            CH1.model_copy(update={"frequency_hz": 0.5}),
            "frequency 0.5 Hz is outside the unit's 1-150 Hz",
        ),
        (
            CH1.model_copy(update={"pulse_width_us": 600}),
            "pulse width 600 us is outside the unit's 50-500 us",
        ),
        (CH1.model_copy(update={"channel": 3}), "channel 3 does not exist on this unit"),
    ],
)
def test_out_of_limit_values_are_refused_before_anything_is_sent(
    estim_url: str, estim_unit: SimulatedUnit, plan: ChannelPlan, message: str
) -> None:
    with connect(estim_url) as device:
        with pytest.raises(OutputLimitError, match=message):
            device.configure(plan)
        with pytest.raises(OutputLimitError):
            device.set_amplitude(1, 50.1, session_id=1)
        with pytest.raises(OutputLimitError):
            device.set_amplitude(1, float("nan"), session_id=1)
    assert estim_unit.requests_seen[MessageType.CONFIGURE_CHANNEL] == 0
    assert estim_unit.requests_seen[MessageType.SET_AMPLITUDE] == 0


# --- retries and link loss -------------------------------------------------------------


def test_retries_through_a_lossy_link_never_start_twice() -> None:
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with (
        serve(unit) as url,
        connect(f"{url}?drop=0.005&corrupt=0.005&seed=11", retries=8) as device,
    ):
        for session in range(1, 31):
            device.configure(CH1)
            device.start_output(
                session_id=session, dwell_s=60, ramp_s=5, watchdog_s=2.0, channels=[1]
            )
            clock.advance(0.2)
            device.stop(StopReason.OPERATOR, give_up_after=2.0)
        assert device.link.stats.retries > 0
    starts = unit.events("output_on")
    assert [e.data["session_id"] for e in starts] == list(range(1, 31))  # each exactly once
    assert unit.requests_seen[MessageType.START] >= 30


def test_link_loss_mid_session_is_reported_within_the_response_deadline(
    estim_url: str, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    downs: list[Any] = []
    with connect(estim_url) as device:
        device.subscribe(lambda e: downs.append(e) if isinstance(e, LinkDown) else None)
        start_one(device)
        estim_clock.advance(0.1)
        device.heartbeat(7)
        powered = device.link.port.sim_connection
        t = estim_clock.now()
        powered.unplug()
        with pytest.raises(LinkLost):
            device.heartbeat(7)
        assert estim_clock.now() - t <= device.link.response_timeout
        assert downs
        with pytest.raises(LinkLost):
            device.stop()  # at once: the link is gone
    # the unit's watchdog is the backstop
    estim_clock.advance(1.0)
    assert estim_unit.faults == {Fault.WATCHDOG}
    assert not estim_unit.output_on


def test_no_answer_after_retries_is_link_lost() -> None:
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url, connect(f"{url}?cut_at=1:100") as device:
        clock.advance(1.0)
        t = clock.now()
        with pytest.raises(LinkLost, match="after 3 attempts of 100 ms"):
            device.status()
        assert clock.now() - t == pytest.approx(0.3)
        assert device.link.lost is not None


def test_an_event_gap_is_reported(estim_url: str, estim_clock: ManualClock) -> None:
    seen: list[Any] = []
    with connect(estim_url) as device:
        device.subscribe(seen.append)
        start_one(device)  # at t=0; RAMP_DONE comes at t=5.0
        conn = device.link.port.sim_connection
        conn.d2h.windows = (FaultWindow(4.95, 5.05, LinkFaults(drop=1.0)),)  # lose it on the wire
        for _ in range(60):
            estim_clock.advance(0.1)
            device.heartbeat(7)
        device.set_amplitude(1, 13, session_id=7)  # AMPLITUDE_REACHED follows
        for _ in range(10):
            estim_clock.advance(0.1)
            device.heartbeat(7)
    assert [e for e in seen if isinstance(e, EventGap)] == [EventGap(expected=2, received=3)]
    assert device.link.stats.missed_events == 1


# --- STOP jumps the queue (scripted port) ------------------------------------------------


def scripted_device(first_seq: int = 0x2A) -> tuple[Device, ScriptedPort]:
    port = ScriptedPort()
    link = Link(port, REAL_CLOCK, name="scripted", response_timeout=5.0, first_seq=first_seq)  # type: ignore[arg-type]
    info = UnitInfo.from_message(UnitConfig().device_info())
    return Device(link, info, "scripted"), port


def test_stop_from_another_thread_while_a_request_is_in_flight() -> None:
    device, port = scripted_device()
    results: list[Any] = []
    status = threading.Thread(target=lambda: results.append(device.heartbeat(7)))
    status.start()
    first = port.next_request()
    assert first.TYPE == MessageType.HEARTBEAT  # in flight, not answered
    stopper = threading.Thread(target=lambda: results.append(device.stop(StopReason.OPERATOR)))
    stopper.start()
    stop = port.next_request()  # written without waiting for the heartbeat's answer
    assert stop.TYPE == MessageType.STOP
    port.answer(encode(Ack(seq=stop.seq, request_type=MessageType.STOP, state=State.IDLE)))
    stopper.join(5)
    assert results == [State.IDLE]  # STOP finished while the heartbeat still waits
    port.answer(encode(Ack(seq=first.seq, request_type=MessageType.HEARTBEAT, state=State.IDLE)))
    status.join(5)
    assert results == [State.IDLE, State.IDLE]
    port.answer(
        encode(Ack(seq=(stop.seq + 1) & 0xFFFF, request_type=MessageType.STOP, state=State.IDLE))
    )
    closer = threading.Thread(target=device.close)
    closer.start()
    final = port.next_request()
    port.answer(encode(Ack(seq=final.seq, request_type=MessageType.STOP, state=State.IDLE)))
    closer.join(5)


def test_stop_is_resent_until_acknowledged_and_then_gives_up() -> None:
    port = ScriptedPort()
    clock = REAL_CLOCK
    link = Link(port, clock, name="scripted", response_timeout=0.02, first_seq=1)  # type: ignore[arg-type]
    try:
        with pytest.raises(LinkLost, match="STOP was not acknowledged"):
            link.stop(StopReason.OPERATOR, give_up_after=0.1)
        sent = []
        while not port.writes.empty():
            sent.append(port.writes.get())
        assert len(sent) >= 4
        assert len(set(sent[:-1])) == 1  # the same bytes, the same seq, every time
        # giving up on the link: one last, blind STOP with a new sequence number
        last = decode(sent[-1])
        assert isinstance(last, Stop)
        assert last.reason == StopReason.HOST_ERROR
        assert last.seq != decode(sent[0]).seq
    finally:
        link.close()


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
    assert errors
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
    closer = threading.Thread(target=device.close)
    closer.start()
    stop = port.next_request()
    port.answer(encode(Ack(seq=stop.seq, request_type=MessageType.STOP, state=State.IDLE)))
    closer.join(5)
    return result[0] if result else None


def ack(kind: MessageType, state: State = State.IDLE) -> Any:
    return lambda seq: Ack(seq=seq, request_type=kind, state=state)


def test_configure_writes_the_golden_bytes() -> None:
    _exchange(
        lambda d: d.configure(CH1), "CONFIGURE_CHANNEL typical", ack(MessageType.CONFIGURE_CHANNEL)
    )


def test_start_writes_the_golden_bytes() -> None:
    _exchange(
        lambda d: d.start_output(
            session_id=0x5E551011, dwell_s=480, ramp_s=5, watchdog_s=0.5, channels=[1]
        ),
        "START typical",
        ack(MessageType.START, State.RAMPING_UP),
    )


def test_heartbeat_and_set_amplitude_and_stop_write_the_golden_bytes() -> None:
    assert (
        _exchange(
            lambda d: d.heartbeat(0x5E551011), "HEARTBEAT typical", ack(MessageType.HEARTBEAT)
        )
        == State.IDLE
    )
    _exchange(
        lambda d: d.set_amplitude(1, 12, session_id=0x5E551011),
        "SET_AMPLITUDE typical",
        ack(MessageType.SET_AMPLITUDE),
    )
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


def test_channel_message_matches_the_vector() -> None:
    info = UnitInfo.from_message(UnitConfig().device_info())
    message = channel_message(CH1, info)
    assert (
        encode(message.__class__(**{**message.__dict__, "seq": 0x2A})).hex()
        == BY_NAME["CONFIGURE_CHANNEL typical"]["hex"]
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
    import os

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
    import os

    master, slave = os.openpty()
    try:
        with pytest.raises(NoAnswer, match=f"no estim unit answered on {os.ttyname(slave)}"):
            connect(os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)


def test_a_device_answering_garbage_is_not_an_estim_unit() -> None:
    import os

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
        with pytest.raises(NoAnswer, match="answered, but not in the estim protocol"):
            connect(path)
    finally:
        stop.set()
        thread.join()
        os.close(master)
        os.close(slave)


def test_a_unit_speaking_another_protocol_version() -> None:
    device_port = ScriptedPort()
    link = Link(device_port, REAL_CLOCK, name="v2", first_seq=5)  # type: ignore[arg-type]
    from estim.device import _hello

    result: list[Any] = []

    def hello() -> None:
        try:
            _hello(link, "v2")
        except VersionMismatch as err:
            result.append(err)

    thread = threading.Thread(target=hello)
    thread.start()
    request = device_port.next_request()
    device_port.answer(
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
    link.close()
    assert "speaks a protocol version this software (version 1) does not" in str(result[0])


def test_a_manual_clock_cannot_drive_a_real_port() -> None:
    with pytest.raises(estim.LinkError, match="manual clock"):
        connect("sim://", clock=ManualClock())


def test_list_ports_returns_port_infos() -> None:
    ports = list_ports()
    assert all(p.device for p in ports)


def test_device_info_round_trips_through_unit_info() -> None:
    info = UnitInfo.from_message(UnitConfig().device_info())
    assert info.as_dict()["amplitude_max_ma"] == 50
    assert isinstance(UnitConfig().device_info(), DeviceInfo)


class _StarvedClock:
    """Real signals and threads, but ``now`` jumps 60 ms each time the port is read:
    a reader thread starved of CPU between two reads of bytes that were already there."""

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
    """Hands out each answer one byte first and the rest on the next read, as a
    reader asking for ``max(1, in_waiting)`` sees it; the reader is starved for
    60 ms between the two reads."""

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
    link = Link(port, clock, name="starved", first_seq=7)  # type: ignore[arg-type]
    try:
        result: list[Any] = []
        thread = threading.Thread(
            target=lambda: result.append(link.request(Heartbeat(session_id=0), timeout=5.0))
        )
        thread.start()
        request = port.next_request()
        port.answer(
            encode(Ack(seq=request.seq, request_type=MessageType.HEARTBEAT, state=State.IDLE))
        )
        thread.join(10)
        assert isinstance(result[0], Ack)
        assert link.stats.rejected_frames == 0
    finally:
        link.close()


def test_connecting_to_a_unit_with_orphaned_output_stops_it(
    estim_url: str, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    # A host died or gave up mid-session; whoever opens the port now cannot be the
    # one running that session: a reconnect means output zero (SAFETY.md 4).
    with connect(estim_url) as first:
        start_one(first, session_id=41)
        estim_clock.advance(0.3)
        first.heartbeat(41)
        first.link.port.sim_connection.unplug()  # the old host is gone without a STOP
        with pytest.raises(LinkLost):
            first.heartbeat(41)
    assert estim_unit.output_on
    with connect(estim_url) as second:
        assert not estim_unit.output_on
        assert second.stopped_orphan == 41
        assert estim_unit.events("output_off")[-1].data["reason"] == "stop"
