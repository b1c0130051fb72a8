"""SAFETY.md section 6: no corrupted frame is ever accepted, and the decoder never
crashes and always resynchronises.

The counts asserted here are the figures quoted in the closing note of issue 2.
"""

from __future__ import annotations

import contextlib
import random
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from hypothesis import given, settings, strategies as st

from estim.protocol import (
    MESSAGE_CLASSES,
    ChannelStatus,
    Decoder,
    FrameError,
    Message,
    MessageType,
    decode,
    encode,
)
from estim.protocol.constants import MAX_CHANNELS
from estim.protocol.fields import Codec, EnumU8, Records, Text, UInt, wire_fields

from . import vectors

FRAMES_MIN = 300


def _random_value(rng: random.Random, codec: Codec[Any]) -> Any:
    if isinstance(codec, UInt):
        return rng.choice([0, codec.max, rng.randint(0, codec.max), rng.randint(0, 255)])
    if isinstance(codec, EnumU8):
        return rng.choice(list(codec.enum))
    if isinstance(codec, Text):
        return "".join(rng.choice("abcXYZ-09é") for _ in range(rng.randint(0, 16)))
    if isinstance(codec, Records):
        return tuple(
            ChannelStatus(**{n: _random_value(rng, c) for n, c in wire_fields(ChannelStatus)})
            for _ in range(rng.randint(0, MAX_CHANNELS))
        )
    raise TypeError(codec)


def varied_frames() -> list[bytes]:
    """Every golden vector, plus seeded random messages of every type."""
    frames = [bytes.fromhex(v["hex"]) for v in vectors.valid()]
    rng = random.Random(20261122)
    types = list(MessageType)
    while len(frames) < FRAMES_MIN + 100:
        cls = MESSAGE_CLASSES[types[len(frames) % len(types)]]
        fields = {n: _random_value(rng, c) for n, c in wire_fields(cls)}
        frames.append(encode(cls(seq=rng.randint(0, 0xFFFF), **fields)))
    return frames


def _yields(wire: bytes) -> list[Message]:
    return Decoder().feed(wire)


def _accepted(wire: bytes) -> bool:
    """Whether a corrupted frame (one 0x00, at its end) is accepted.

    Takes the stream decoder's path without its per-call setup: the inner loop
    runs millions of times. Frames with more than one 0x00 go through Decoder.
    """
    if wire.count(0) != 1 or wire[-1] != 0:
        return bool(_yields(wire))
    try:
        decode(wire)
    except FrameError:
        return False
    return True


def corrupt_all(wire: bytes) -> tuple[dict[str, int], list[tuple[str, bytes]]]:
    """Try every single-byte substitution, deletion and duplication of one frame."""
    checked = {"substitution": 0, "deletion": 0, "duplication": 0}
    accepted: list[tuple[str, bytes]] = []
    for i in range(len(wire)):
        for value in range(256):
            if value == wire[i]:
                continue
            bad = wire[:i] + bytes([value]) + wire[i + 1 :]
            checked["substitution"] += 1
            if _accepted(bad):
                accepted.append(("substitution", bad))
        checked["deletion"] += 1
        if _accepted(wire[:i] + wire[i + 1 :]):
            accepted.append(("deletion", wire[:i] + wire[i + 1 :]))
        if i == len(wire) - 1:
            continue  # a second delimiter leaves the frame itself intact
        checked["duplication"] += 1
        if _accepted(wire[: i + 1] + wire[i:]):
            accepted.append(("duplication", wire[: i + 1] + wire[i:]))
    return checked, accepted


def test_every_single_byte_corruption_is_rejected() -> None:
    frames = varied_frames()[:FRAMES_MIN]
    checked = {"substitution": 0, "deletion": 0, "duplication": 0}
    accepted: list[tuple[str, bytes]] = []
    # Millions of decodes: use both cores. Each worker runs the same pure code.
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("fork")) as pool:
        for counts, found in pool.map(corrupt_all, frames, chunksize=10):
            for k, v in counts.items():
                checked[k] += v
            accepted += found
    assert checked["substitution"] > 2_000_000
    assert checked["deletion"] > 10_000
    assert checked["duplication"] > 10_000
    assert accepted == []


def test_random_streams_never_crash_and_never_yield() -> None:
    rng = random.Random(6)
    streams = 100_000
    yielded = 0
    for _ in range(streams):
        size = rng.randint(0, 300)
        data = rng.randbytes(size)
        if rng.random() < 0.5:  # make delimiters common, so many "frames" get checked
            data = bytes(b if rng.random() > 0.05 else 0 for b in data)
        decoder = Decoder()
        yielded += len(decoder.feed(data))
    assert yielded == 0


@settings(max_examples=2000, deadline=None)
@given(data=st.binary(max_size=600), split=st.integers(0, 600))
def test_random_bytes_raise_only_frame_errors(data: bytes, split: int) -> None:
    decoder = Decoder()
    decoder.receive(data[:split])
    decoder.receive(data[split:])
    while True:
        try:
            message = decoder.next_message()
        except FrameError:
            continue
        assert message is None  # random bytes never make a message
        break
    with contextlib.suppress(FrameError):
        decode(data)


@settings(max_examples=500, deadline=None)
@given(garbage=st.binary(max_size=400))
def test_resynchronises_at_the_next_delimiter(garbage: bytes) -> None:
    good = bytes.fromhex(vectors.valid()[0]["hex"])
    decoder = Decoder()
    assert decoder.feed(garbage + b"\x00" + good + good) == [decode(good), decode(good)]


def test_a_lost_delimiter_costs_one_frame_only() -> None:
    frames = [bytes.fromhex(v["hex"]) for v in vectors.valid()[:3]]
    merged = frames[0][:-1] + frames[1] + frames[2]  # frame 0's 0x00 was lost
    assert Decoder().feed(merged) == [decode(frames[2])]
