"""The manual clock: virtual time that threads share deterministically."""

from __future__ import annotations

import threading

import pytest

from estim.clock import REAL_CLOCK, ClockStalled, ManualClock


def test_advance_moves_time_exactly() -> None:
    clock = ManualClock(5.0)
    for _ in range(6000):
        clock.advance(0.1)
    assert clock.now() == 605.0


def test_a_participant_wakes_at_each_of_its_deadlines() -> None:
    clock = ManualClock()
    seen: list[float] = []
    stop = clock.signal()

    def beat() -> None:
        while not stop.wait(0.1):
            seen.append(clock.now())

    thread = clock.start_thread(beat, "beat")
    clock.advance(1.0)
    stop.set()
    thread.join()
    assert seen == pytest.approx([0.1 * i for i in range(1, 11)])


def test_advance_waits_for_participants_to_finish_their_work() -> None:
    clock = ManualClock()
    go = clock.signal()
    done: list[float] = []

    def worker() -> None:
        go.wait()
        total = sum(range(200_000))  # busy: time must not move meanwhile
        done.append(clock.now() + total * 0)

    thread = clock.start_thread(worker, "worker")
    go.set()
    clock.advance(3.0)
    thread.join()
    assert done == [0.0]


def test_a_non_participant_wait_drives_time_to_the_signal() -> None:
    clock = ManualClock()
    fired = clock.signal()
    stop = clock.signal()

    def timer() -> None:
        if not stop.wait(42.0):
            fired.set()

    thread = clock.start_thread(timer, "timer")
    assert fired.wait(100.0)
    assert clock.now() == 42.0
    thread.join()


def test_a_non_participant_wait_times_out_in_virtual_time() -> None:
    clock = ManualClock()
    assert not clock.signal().wait(7.5)
    assert clock.now() == 7.5


def test_waiting_forever_with_nothing_to_happen_raises_instead_of_hanging() -> None:
    clock = ManualClock()
    with pytest.raises(ClockStalled, match="no thread will ever wake"):
        clock.signal().wait()


def test_a_participant_stuck_outside_the_clock_is_named() -> None:
    clock = ManualClock(stall_timeout=0.2)
    release = threading.Event()
    thread = clock.start_thread(lambda: release.wait(5.0) and None, "stuck-reader")
    with pytest.raises(ClockStalled, match="stuck-reader"):
        clock.advance(1.0)
    release.set()
    thread.join()


def test_participants_cannot_drive_their_own_clock() -> None:
    clock = ManualClock()
    errors: list[BaseException] = []

    def bad() -> None:
        try:
            clock.advance(1.0)
        except ClockStalled as err:
            errors.append(err)

    clock.start_thread(bad, "bad").join()
    assert errors


def test_cannot_go_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        ManualClock().advance(-1)


def test_real_clock_is_monotonic() -> None:
    a = REAL_CLOCK.now()
    assert REAL_CLOCK.now() >= a
    assert not REAL_CLOCK.signal().wait(0)
