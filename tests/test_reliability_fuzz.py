"""Fuzzing the frame decoder (``estim.protocol.Decoder``), the first code to touch
bytes from the wire (issue 7).

Properties, for any input:

- ``feed()`` never raises;
- ``next_message()`` raises nothing but ``FrameError``, and yields the same
  messages as ``feed()``, whatever the chunking;
- a message comes out only if its exact encoding (``encode(message)``) is in the
  input right after a delimiter, so random bytes never yield one, and every
  decoded message round-trips (``decode(encode(m)) == m``);
- after garbage and a delimiter, the decoder resynchronises: the next whole
  frame decodes.

Two inputs reach different depths: raw byte streams (which a CRC-32 stops almost
at once), and frame bodies (header + payload, anything at all) whose CRC and
COBS stuffing the harness supplies, so header and payload checks are explored.

Engines:

- hypothesis, always: a few seconds in CI (derandomized); with
  ``ESTIM_RELIABILITY=full`` a large budget bounded by ``ESTIM_FUZZ_SECONDS``
  (default 120) per test; a number multiplies the CI budget;
- atheris (coverage-guided libFuzzer), only with ``ESTIM_RELIABILITY=full`` and
  atheris installed (``pip install atheris``): the same harness in a subprocess
  for ``ESTIM_FUZZ_SECONDS`` seconds (crash inputs are kept under the test's
  tmp_path and reported).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings, strategies as st

from estim.errors import FrameError
from estim.protocol import (
    MAX_ENCODED,
    MESSAGE_CLASSES,
    Decoder,
    Message,
    MessageType,
    cobs_encode,
    decode,
    encode,
)
from estim.protocol.fields import encode_fields

from .reliability_helpers import FULL, SEED, scaled
from .strategies import any_message

FUZZ_SECONDS = float(os.environ.get("ESTIM_FUZZ_SECONDS", "120"))
ROOT = Path(__file__).resolve().parent.parent

# --- the harness (also the atheris target) ----------------------------------------------


def check_stream(data: bytes, cuts: list[int] | None = None) -> list[Message]:
    """Every property for one byte stream, fed in the chunks ``cuts`` makes."""
    points = sorted({c % (len(data) + 1) for c in cuts or []} | {0, len(data)})
    fed = Decoder()
    messages: list[Message] = []
    for a, b in itertools.pairwise(points):
        messages += fed.feed(data[a:b])  # never raises

    stepped = Decoder()
    stepped.receive(data)
    one_by_one: list[Message] = []
    rejected = 0
    while True:
        try:
            message = stepped.next_message()
        except FrameError:
            rejected += 1
            continue
        if message is None:
            break
        one_by_one.append(message)
    assert one_by_one == messages, "next_message() and feed() disagree"
    assert rejected == stepped.rejected

    framed = b"\x00" + data
    for message in messages:
        wire = encode(message)
        assert decode(wire) == message
        assert b"\x00" + wire in framed, f"{message} came out of bytes that do not hold it"
    return messages


def frame_body(body: bytes) -> bytes:
    """``body`` (header + payload, anything) as the wire carries it: CRC-32, COBS, 0x00."""
    return cobs_encode(body + struct.pack("<I", zlib.crc32(body))) + b"\x00"


def check_body(body: bytes, cuts: list[int] | None = None) -> Message | None:
    """A frame with a good CRC: it decodes to one message whose encoding is exactly
    these bytes (one canonical encoding per message), or it is rejected."""
    wire = frame_body(body)
    messages = check_stream(wire, cuts)
    try:
        expected = decode(wire)
    except FrameError:
        assert messages == []
        return None
    assert messages == [expected]
    assert encode(expected) == wire, f"{expected} has a second encoding {wire.hex()}"
    return expected


def fuzz_one_input(data: bytes) -> None:
    """The atheris target: the first byte chooses the input kind."""
    if not data:
        return
    kind, rest = data[0] % 3, data[1:]
    if kind == 0:
        check_stream(rest)
    elif kind == 1:
        check_body(rest)
    else:  # a stream with cuts drawn from its own tail
        cuts = list(rest[-4:])
        check_stream(rest[:-4], cuts)


# --- hypothesis ----------------------------------------------------------------------------

#: examples per batch in full mode (each batch has its own seed)
BATCH = 2_000


def hypothesis_fuzz(prop: Callable[..., None], ci: int, **strategies: Any) -> int:
    """Run ``prop`` under hypothesis and return how many examples were asked for:
    ``ci`` examples (scaled, derandomized) by default; with ESTIM_RELIABILITY=full,
    batches of BATCH examples with successive seeds until FUZZ_SECONDS have passed."""

    def run(examples: int, seed_value: int | None) -> None:
        test = settings(
            max_examples=examples,
            deadline=None,
            derandomize=seed_value is None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(given(**strategies)(prop))
        if seed_value is not None:
            test = seed(seed_value)(test)
        test()

    if not FULL:
        examples = scaled(ci, ci)
        run(examples, None)
    else:
        end, batches = time.monotonic() + FUZZ_SECONDS, 0
        while time.monotonic() < end:
            run(BATCH, SEED + batches)
            batches += 1
        examples = batches * BATCH
    print(f"{prop.__qualname__}: {examples} examples")  # shown with pytest -s or -rP
    return examples


TYPES = [int(t) for t in MessageType]
headers = st.tuples(
    st.one_of(st.just(1), st.integers(0, 255)),  # version
    st.one_of(st.sampled_from([1, 2, 3]), st.integers(0, 255)),  # kind
    st.integers(0, 0xFFFF),  # seq
    st.one_of(st.sampled_from(TYPES), st.integers(0, 255)),  # type
    st.one_of(st.just(0), st.integers(0, 255)),  # flags
    st.one_of(st.none(), st.integers(0, 0xFFFF)),  # length: None = the true length
)


def _body(header: tuple[int, int, int, int, int, int | None], payload: bytes) -> bytes:
    version, kind, seq, msg_type, flags, length = header
    size = len(payload) if length is None else length
    return struct.pack("<BBHBBH", version, kind, seq, msg_type, flags, size) + payload


@st.composite
def payloads(draw: st.DrawFn, header: tuple[int, int, int, int, int, int | None]) -> bytes:
    """Random bytes, or a valid message's fields mangled a little."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=260))
    cls = MESSAGE_CLASSES.get(MessageType(header[3])) if header[3] in TYPES else None
    if cls is None:
        return draw(st.binary(max_size=260))
    from .strategies import message_strategy

    raw = bytearray(encode_fields(draw(message_strategy(cls))))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "cut", "add"]))
        if op == "flip" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] ^= draw(st.integers(1, 255))
        elif op == "cut" and raw:
            del raw[draw(st.integers(0, len(raw) - 1)) :]
        else:
            raw += draw(st.binary(min_size=1, max_size=4))
    return bytes(raw)


bodies = headers.flatmap(lambda h: payloads(h).map(lambda p: _body(h, p)))


def test_random_bytes_never_crash_and_never_yield_a_message() -> None:
    def prop(data: bytes, cuts: list[int]) -> None:
        assert check_stream(data, cuts) == []

    hypothesis_fuzz(
        prop, 600, data=st.binary(max_size=3 * MAX_ENCODED), cuts=st.lists(st.integers(0, 4096))
    )


def test_frames_with_a_good_crc_decode_canonically_or_are_rejected() -> None:
    def prop(body: bytes, cuts: list[int]) -> None:
        check_body(body, cuts)

    hypothesis_fuzz(prop, 500, body=bodies, cuts=st.lists(st.integers(0, 300), max_size=4))


def test_the_decoder_resynchronises_at_the_next_delimiter() -> None:
    def prop(garbage: bytes, messages: list[Message], cuts: list[int]) -> None:
        stream = garbage + b"\x00" + b"".join(encode(m) for m in messages)
        out = check_stream(stream, cuts)
        assert out[-len(messages) :] == messages

    hypothesis_fuzz(
        prop,
        150,
        garbage=st.binary(max_size=2 * MAX_ENCODED),
        messages=st.lists(any_message, min_size=1, max_size=3),
        cuts=st.lists(st.integers(0, 2000), max_size=6),
    )


def test_feeding_with_inter_byte_gaps_never_raises() -> None:
    def prop(chunks: list[tuple[bytes, float]]) -> None:
        decoder = Decoder()
        now = 0.0
        for data, gap in chunks:
            now += gap
            for message in decoder.feed(data, now):
                assert decode(encode(message)) == message

    hypothesis_fuzz(
        prop,
        200,
        chunks=st.lists(
            st.tuples(st.binary(max_size=80), st.floats(0, 0.2, allow_nan=False)), max_size=12
        ),
    )


def test_the_harness_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above are not vacuous: a frame in the input comes out, a body
    with a good CRC decodes, a bad one does not, and a decoder that invents a
    message or raises something other than FrameError is caught."""
    from estim.protocol import Heartbeat, Start, cobs_decode

    start = Start(
        seq=7, session_id=9, dwell_ms=60_000, ramp_ms=5_000, watchdog_ms=500, channel_mask=1
    )
    assert check_stream(b"\x13\x37\x00" + encode(start), [1, 5]) == [start]
    beat = Heartbeat(seq=3, session_id=1)
    body = cobs_decode(encode(beat)[:-1])[:-4]  # header + payload, no CRC
    assert check_body(body) == beat
    assert check_body(body[:-1]) is None  # the length field no longer matches
    assert check_body(b"\x02" + body[1:]) is None  # protocol version 2
    monkeypatch.setattr(Decoder, "feed", lambda self, data, now=None: [start])
    with pytest.raises(AssertionError):
        check_stream(b"\x01\x02\x00")
    monkeypatch.undo()
    monkeypatch.setattr(Decoder, "next_message", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        check_stream(b"\x01\x02\x00")


# --- atheris -------------------------------------------------------------------------------

ATHERIS = importlib.util.find_spec("atheris") is not None

_ATHERIS_MAIN = """
import sys
import atheris
with atheris.instrument_imports(include=["estim"]):
    import estim.protocol
    import estim.errors
from tests.test_reliability_fuzz import fuzz_one_input
atheris.Setup(sys.argv, fuzz_one_input)
atheris.Fuzz()
"""


@pytest.mark.skipif(not FULL, reason="atheris runs with ESTIM_RELIABILITY=full only")
@pytest.mark.skipif(not ATHERIS, reason="atheris is not installed (pip install atheris)")
def test_coverage_guided_fuzzing_with_atheris(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    from estim.protocol import Heartbeat, Start

    for i, seed_input in enumerate(
        [
            b"\x00" + encode(Heartbeat(seq=1, session_id=2)),
            b"\x01" + bytes(8),
            b"\x00"
            + encode(
                Start(
                    seq=2, session_id=3, dwell_ms=60_000, ramp_ms=0, watchdog_ms=500, channel_mask=1
                )
            ),
        ]
    ):
        (corpus / f"seed{i}").write_bytes(seed_input)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _ATHERIS_MAIN,
            f"-max_total_time={int(FUZZ_SECONDS)}",
            f"-seed={SEED}",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
            str(corpus),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 300,
    )
    crashes = sorted(
        p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-"))
    )
    tail = result.stderr[-4000:]
    assert result.returncode == 0, f"atheris found a failing input {crashes}:\n{tail}"
    assert crashes == []
    done = re.search(r"Done (\d+) runs", result.stderr)
    assert done is not None, tail
    assert int(done.group(1)) > 1000, tail
    cov = re.findall(r"cov: (\d+) ft: (\d+)", result.stderr)
    print(
        f"atheris: {done.group(1)} runs in {FUZZ_SECONDS:g} s; final cov/ft {cov[-1] if cov else '?'}"
    )
