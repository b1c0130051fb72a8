"""The link model: seeded manipulation and wire-time pacing."""

from __future__ import annotations

import pytest

from estim.sim import FaultWindow, Line, LinkFaults


def test_a_clean_line_delivers_everything_at_once_in_order() -> None:
    line = Line()
    line.send(b"abc", 1.0)
    line.send(b"def", 1.0)
    assert line.take(1.0) == b"abcdef"
    assert line.take(2.0) == b""


def test_pacing_takes_the_wire_time_of_8n1() -> None:
    line = Line(baud=115_200)
    line.send(bytes(100), 0.0)
    assert line.next_due() == pytest.approx(100 * 10 / 115_200)
    assert line.take(0.008) == b""
    assert line.take(0.009) == bytes(100)
    line.send(b"x" * 10, 1.0)
    line.send(b"y" * 10, 1.0)  # queued behind the first write on the wire
    assert line.next_due() == pytest.approx(1.0 + 10 * 10 / 115_200)
    assert line.take(1.0 + 20 * 10 / 115_200 + 1e-9) == b"x" * 10 + b"y" * 10


def test_manipulation_is_seeded_and_counted() -> None:
    def run(seed: int) -> tuple[bytes, int]:
        line = Line(LinkFaults(drop=0.1, corrupt=0.1, duplicate=0.1), seed=seed)
        line.send(bytes(range(256)) * 4, 0.0)
        return line.take(0.0), line.stats.dropped

    a, dropped = run(1)
    assert run(1) == (a, dropped)
    assert run(2)[0] != a
    assert 50 < dropped < 160


def test_delays_never_reorder_bytes() -> None:
    line = Line(LinkFaults(delay=1.0, delay_s=0.5), seed=3)
    line.send(b"first", 0.0)
    line = Line(LinkFaults(delay=0.5, delay_s=0.5), seed=3)
    for i in range(20):
        line.send(bytes([i]), i * 0.01)
    assert line.take(10.0) == bytes(range(20))


def test_a_window_cuts_the_line_at_a_given_time() -> None:
    line = Line(windows=(FaultWindow(1.0, 2.0, LinkFaults(drop=1.0)),))
    line.send(b"a", 0.5)
    line.send(b"b", 1.5)
    line.send(b"c", 2.0)
    assert line.take(3.0) == b"ac"


def test_bad_probabilities_are_refused() -> None:
    with pytest.raises(ValueError, match=r"drop=1\.5"):
        LinkFaults(drop=1.5)
