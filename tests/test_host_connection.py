"""The host's connection state, sans I/O: no threads, no port, no clock; bytes and
times in, messages and bytes out (issue 10)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from estim.protocol import (
    Ack,
    Answer,
    EventGap,
    Expired,
    GetStatus,
    Heartbeat,
    HostConnection,
    MessageType,
    Nack,
    OutputStarted,
    RampDone,
    Start,
    State,
    Status,
    Stop,
    decode,
    encode,
)

from .strategies import any_message

START = Start(session_id=9, dwell_ms=60_000, ramp_ms=0, watchdog_ms=500, channel_mask=1)


def ack(seq: int, kind: MessageType = MessageType.HEARTBEAT) -> bytes:
    return encode(Ack(seq=seq, request_type=kind, state=State.IDLE))


def test_sequence_numbers_count_up_wrap_and_skip_pending_ones() -> None:
    conn = HostConnection(first_seq=0xFFFE)
    seqs = [conn.send(Heartbeat(session_id=0), 0.0)[0].seq for _ in range(3)]
    assert seqs == [0xFFFE, 0xFFFF, 0]
    conn.receive(ack(0xFFFF), 0.01)
    conn.receive(ack(0), 0.01)
    # 0xFFFE is still pending: 65536 sends later it is skipped, not reused
    for _ in range(0xFFFD):
        request, _ = conn.send(Heartbeat(session_id=0), 0.0)
        conn.cancel(request.seq)
    assert conn.send(Heartbeat(session_id=0), 0.0)[0].seq == 0xFFFF


def test_an_answer_is_matched_to_its_request_by_seq() -> None:
    conn = HostConnection(first_seq=7)
    status, wire = conn.send(GetStatus(), 1.0)
    assert decode(wire) == status
    beat, _ = conn.send(Heartbeat(session_id=9), 1.0)
    got = conn.receive(ack(beat.seq) + ack(status.seq, MessageType.GET_STATUS), 1.002)
    assert got == [
        Answer(beat, Ack(seq=8, request_type=MessageType.HEARTBEAT, state=State.IDLE)),
        Answer(status, Ack(seq=7, request_type=MessageType.GET_STATUS, state=State.IDLE)),
    ]
    assert conn.last_rx == 1.002
    # a second answer to the same seq (the unit answered a retransmission too) is stale
    assert conn.receive(ack(beat.seq), 1.003) == []
    assert conn.stats.stale_answers == 1


def test_a_retransmission_is_the_same_bytes_and_expiry_follows_the_last_attempt() -> None:
    conn = HostConnection(first_seq=1, response_timeout=0.1, retries=2)
    request, wire = conn.send(GetStatus(), 10.0)
    assert conn.next_deadline() == pytest.approx(10.1)
    assert conn.poll(10.05) == ([], [])
    assert conn.poll(10.1) == ([wire], [])
    assert conn.poll(10.2) == ([wire], [])
    assert conn.poll(10.3) == ([], [Expired(request, 3)])
    assert conn.next_deadline() is None
    assert conn.stats.retries == 2
    # the answer that comes too late is stale
    assert conn.receive(ack(request.seq, MessageType.GET_STATUS), 10.4) == []


def test_retries_per_request_and_forever_until_cancelled() -> None:
    conn = HostConnection(first_seq=1)
    once, _ = conn.send(Heartbeat(session_id=5), 0.0, retries=0, timeout=0.05)
    stop, stop_wire = conn.send(Stop(reason=1), 0.0, retries="forever")
    wires, expired = conn.poll(0.05)
    assert (wires, expired) == ([], [Expired(once, 1)])
    for t in (0.1, 0.21, 0.32, 5.0):
        assert conn.poll(t) == ([stop_wire], [])
    conn.cancel(stop.seq)
    assert conn.poll(10.0) == ([], [])


def test_a_start_is_never_resent_once_a_stop_has_gone_out() -> None:
    """PROTOCOL.md 9: a START lost on the line and resent after a STOP would start
    output after the unit acknowledged the stop. It is still matched to its answer
    until it would have been resent, then expires; other requests are resent as ever."""
    conn = HostConnection(first_seq=1, response_timeout=0.1, retries=2)
    start, _ = conn.send(START, 0.0)
    _, poll_wire = conn.send(GetStatus(), 0.0)
    assert conn.poll(0.1)[0] != []  # (before the STOP, START is resent as usual)
    conn.send(Stop(reason=1), 0.15, retries="forever")
    wires, expired = conn.poll(0.2)
    assert Expired(start, 2) in expired
    assert all(decode(w).TYPE != MessageType.START for w in wires)
    assert poll_wire in wires


def test_a_start_answered_after_a_stop_went_out_is_still_matched() -> None:
    conn = HostConnection(first_seq=1, response_timeout=0.1, retries=2)
    start, _ = conn.send(START, 0.0)
    conn.send(Stop(reason=1), 0.01, retries="forever")
    [answer] = conn.receive(ack(start.seq, MessageType.START), 0.02)
    assert isinstance(answer, Answer)
    assert answer.request == start


def test_events_the_first_is_the_start_then_gaps_are_reported() -> None:
    conn = HostConnection(first_seq=1)

    def event(seq: int) -> bytes:
        return encode(RampDone(seq=seq, session_id=3, time_ms=0))

    # a host that connects after BOOTED (event 0) sees event 5 first: not a gap
    assert [type(m) for m in conn.receive(event(5), 0.0)] == [RampDone]
    assert conn.receive(event(6), 0.0) == [RampDone(seq=6, session_id=3, time_ms=0)]
    got = conn.receive(event(9), 0.0)
    assert got[0] == EventGap(expected=7, received=9)
    assert conn.stats.missed_events == 2
    assert conn.receive(event(10), 0.0)[0] == RampDone(seq=10, session_id=3, time_ms=0)


def test_the_gap_rule_runs_on_line_time() -> None:
    frame = encode(OutputStarted(seq=0, session_id=1, time_ms=0, dwell_ms=60_000, channel_mask=1))
    conn = HostConnection(first_seq=1)
    # the two halves were 5 s apart by the wall but never apart on the line
    conn.receive(frame[:5], 0.0, line_time=0.0)
    assert len(conn.receive(frame[5:], 5.0, line_time=0.001)) == 1
    # 60 ms of real silence on the line drops the partial frame
    conn.receive(frame[:5], 6.0, line_time=1.0)
    assert conn.receive(frame[5:], 6.1, line_time=1.06) == []
    assert conn.stats.rejected_frames == 2  # the stale half (gap), then the tail alone


def test_nothing_valid_means_nothing_heard() -> None:
    conn = HostConnection(first_seq=1)
    conn.receive(b"\x01\x02\x03\x00garbage\x00", 1.0)
    assert conn.last_rx is None
    request, _ = conn.send(GetStatus(), 1.0)
    nack = Nack(seq=request.seq, request_type=7, error=2, field=0, channel=0, state=State.IDLE)
    got = conn.receive(encode(nack), 2.0)
    assert got == [Answer(request, nack)]
    assert conn.last_rx == 2.0
    assert not isinstance(got[0].response, Status)


@settings(max_examples=300, deadline=None)
@given(st.lists(any_message, min_size=1, max_size=40))
def test_every_frame_sent_is_the_generic_encoding_of_its_request(messages: list[Any]) -> None:
    """The connection keeps each payload it sends (a HEARTBEAT's is the same every
    period) and builds only header and CRC per send: the bytes must be exactly the
    codec's own encoding of the request, however the messages repeat and whatever
    seq each carried when given, and retransmissions the same bytes again."""
    conn = HostConnection(first_seq=0xFFF0, retries=1, response_timeout=0.1)
    sent = []
    for i, message in enumerate(messages * 2):  # every one sent again: the kept payload
        request, wire = conn.send(message, float(i))
        assert request == replace(message, seq=request.seq)
        assert wire == encode(request)
        assert decode(wire) == request
        sent.append(wire)
    retransmitted, _ = conn.poll(float(len(sent)) + 1.0)
    assert set(retransmitted) <= set(sent)
