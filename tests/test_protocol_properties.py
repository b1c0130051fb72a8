"""Round trips of every message type over its whole field ranges, in any chunking."""

from __future__ import annotations

import itertools

import pytest
from cobs import cobs as reference_cobs
from hypothesis import given, settings, strategies as st

from estim.protocol import (
    MAX_ENCODED,
    MESSAGE_CLASSES,
    Decoder,
    FrameError,
    LocalProtocolError,
    Message,
    MessageType,
    Start,
    cobs_decode,
    cobs_encode,
    decode,
    encode,
    message_from_dict,
    message_to_dict,
)

from .strategies import any_message, message_strategy


@pytest.mark.parametrize("msg_type", list(MessageType), ids=lambda t: t.name)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_round_trip_every_type(msg_type: MessageType, data: st.DataObject) -> None:
    message = data.draw(message_strategy(MESSAGE_CLASSES[msg_type]))
    wire = encode(message)
    assert wire.endswith(b"\x00")
    assert b"\x00" not in wire[:-1]
    assert len(wire) <= MAX_ENCODED + 1
    assert decode(wire) == message
    assert message_from_dict(message_to_dict(message)) == message


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(any_message, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 2000)))
def test_stream_in_any_chunking(messages: list[Message], cuts: list[int]) -> None:
    stream = b"".join(encode(m) for m in messages)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = Decoder()
    out: list[Message] = []
    for a, b in itertools.pairwise(points):
        out += decoder.feed(stream[a:b])
    assert out == messages
    assert decoder.rejected == 0
    assert decoder.buffered == 0


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=1200))
def test_cobs_matches_reference(data: bytes) -> None:
    ours = cobs_encode(data)
    assert ours == reference_cobs.encode(data)
    assert cobs_decode(ours) == data


def test_encode_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(LocalProtocolError, match="dwell_ms=4294967296"):
        encode(Start(session_id=1, dwell_ms=2**32, ramp_ms=0, watchdog_ms=500, channel_mask=1))
    with pytest.raises(LocalProtocolError, match="seq=65536"):
        encode(
            Start(seq=65536, session_id=1, dwell_ms=1, ramp_ms=0, watchdog_ms=500, channel_mask=1)
        )
    with pytest.raises(LocalProtocolError, match="watchdog_ms=-1"):
        encode(Start(session_id=1, dwell_ms=1, ramp_ms=0, watchdog_ms=-1, channel_mask=1))
    with pytest.raises(LocalProtocolError, match="integer"):
        encode(Start(session_id=1, dwell_ms=1.5, ramp_ms=0, watchdog_ms=5, channel_mask=1))  # type: ignore[arg-type]


def test_gap_drops_a_stale_partial_frame() -> None:
    wire = encode(
        Start(seq=1, session_id=9, dwell_ms=60000, ramp_ms=0, watchdog_ms=500, channel_mask=1)
    )
    decoder = Decoder()
    assert decoder.feed(wire[:10], now=1.000) == []
    # 49 ms of silence is allowed ...
    assert decoder.feed(wire[10:12], now=1.049) == []
    # ... 51 ms more is not: the partial frame is dropped, the rest no longer decodes
    assert decoder.feed(wire[12:], now=1.100) == []
    assert decoder.last_error is not None
    assert decoder.rejected == 2
    # the next whole frame decodes
    assert decoder.feed(wire, now=1.101) == [decode(wire)]


def test_next_message_raises_one_error_per_bad_frame_then_continues() -> None:
    good = encode(
        Start(seq=1, session_id=9, dwell_ms=60000, ramp_ms=0, watchdog_ms=500, channel_mask=1)
    )
    bad = bytearray(good)
    bad[5] ^= 0xFF
    decoder = Decoder()
    decoder.receive(bytes(bad) + good)
    with pytest.raises(FrameError):
        decoder.next_message()
    assert decoder.next_message() == decode(good)
    assert decoder.next_message() is None
