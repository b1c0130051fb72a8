"""The conformance suite: clauses run against a unit, one row per rule of the spec.

``run(url)`` opens the port, runs the clauses that drive no current, asks
``confirm()`` whether a test load (a resistor, not a person) is connected, runs
the clauses that do if so, and returns a ``Report``. Every clause that starts
output leaves the unit IDLE with no fault latched.
"""

from __future__ import annotations

import errno
import random
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from estim.clock import REAL_CLOCK, Clock
from estim.ports import port_clock
from estim.protocol import DeviceInfo, Stop, StopReason, encode, message_to_dict

from . import (
    boundaries,
    ended,
    framing,
    handshake,
    ramps,
    requests,
    rig,
    stopping,
    watchdog,
)
from .clause import (
    FAIL,
    NEEDS_TEST_LOAD,
    PASS,
    PATIENCE_S,
    SKIP,
    Clause,
    Context,
    Failed,
    Rig,
    Row,
    failed,
    skipped,
)
from .limits import NoSession
from .port import PortLost, UnitPort
from .unseen import not_checked


@dataclass
class Report:
    port: str
    rows: list[Row] = field(default_factory=list)
    info: DeviceInfo | None = None
    #: whether the clauses that drive current ran
    test_load: bool = False
    #: the unit never answered, or the port failed: what happened
    unreachable: str | None = None
    #: what the test load could do (lead-off clauses)
    rig: Rig = field(default_factory=Rig)

    @property
    def counts(self) -> dict[str, int]:
        return {r: sum(1 for row in self.rows if row.result == r) for r in (PASS, FAIL, SKIP)}

    @property
    def exit_code(self) -> int:
        """0 every clause passed; 1 the clauses that drive current were skipped (no
        test load confirmed); 4 the unit failed a clause; 5 it could not be reached."""
        if self.unreachable is not None:
            return 5
        if any(row.result == FAIL for row in self.rows):
            return 4
        if not self.test_load:
            return 1
        return 0

    def as_json(self) -> dict[str, Any]:
        unit = None
        if self.info is not None:
            unit = {k: v for k, v in message_to_dict(self.info).items() if k not in ("type", "seq")}
        counts = self.counts
        return {
            "port": self.port,
            "unit": unit,
            "test_load": self.test_load,
            "rows": [row.as_json() for row in self.rows],
            "passed": counts[PASS],
            "failed": counts[FAIL],
            "skipped": counts[SKIP],
            "unreachable": self.unreachable,
            "exit_code": self.exit_code,
            "not_checked": [{"property": what, "how": how} for what, how in not_checked(self.rig)],
        }


def clauses() -> list[Clause]:
    """Every clause, in the order they run: those that drive no current first; the
    lead-off rig's last (its relay may leave a simulated electrode open)."""
    return [
        *handshake.CLAUSES,
        *requests.IDLE_CLAUSES,
        *boundaries.IDLE_CLAUSES,
        *framing.CLAUSES,
        *requests.OUTPUT_CLAUSES,
        *boundaries.OUTPUT_CLAUSES,
        *stopping.CLAUSES,
        *watchdog.CLAUSES,
        *ramps.CLAUSES,
        *ended.CLAUSES,
        *rig.CLAUSES,
        *framing.FINAL_CLAUSES,
    ]


#: clauses that run whatever ``only`` says: the handshake (DEVICE_INFO) and the
#: judgements of the whole run
ALWAYS = frozenset(c.name for c in [*handshake.CLAUSES, *framing.FINAL_CLAUSES])


def clause_names() -> list[str]:
    return [c.name for c in clauses() if c.name not in ALWAYS]


def check(
    port: Any,
    *,
    name: str = "",
    clock: Clock | None = None,
    confirm: Callable[[], bool] = lambda: False,
    on_row: Callable[[Row], None] | None = None,
    seed: int | None = None,
    patience_s: float = PATIENCE_S,
    rig: Rig | None = None,
    only: Collection[str] | None = None,
) -> Report:
    """Run the suite on an open pyserial ``port``. ``confirm()`` is asked once, before
    the first clause that drives current; it must say whether a test load (not a
    person) is connected to every channel. Each row goes to ``on_row`` as it is
    judged. ``rig`` says what the test load can do besides (lead-off). ``only``
    names the clauses to run (``clause_names()``; the handshake and the judgements
    of the whole run always run). Time is ``clock``'s; by default a ``sim://``
    unit's own clock (virtual time for a unit served on a ``ManualClock``), else
    the real one."""
    clock = clock or port_clock(port) or REAL_CLOCK
    rig = rig or Rig()
    if only is not None:
        unknown = sorted(set(only) - set(clause_names()))
        if unknown:
            raise ValueError(
                f"no clause named {', '.join(map(repr, unknown))}; known: {', '.join(clause_names())}"
            )
    ctx = Context(UnitPort(port, clock, random.Random(seed)), clock, patience_s, rig)
    report = Report(name or str(getattr(port, "port", "") or ""), rig=rig)
    confirmed: bool | None = None
    ids_found = False

    def emit(rows: list[Row]) -> None:
        for row in rows:
            report.rows.append(row)
            if on_row is not None:
                on_row(row)

    try:
        for clause in clauses():
            if only is not None and clause.name not in only and clause.name not in ALWAYS:
                continue
            if report.unreachable is not None:
                emit(skipped(clause, ctx, f"the unit could not be reached: {report.unreachable}"))
                continue
            if ctx.info is None and clause.name != "handshake":
                emit(skipped(clause, ctx, "no DEVICE_INFO from the unit"))
                continue
            if clause.stimulating:
                if confirmed is None:
                    confirmed = bool(confirm())
                    report.test_load = confirmed
                if not confirmed:
                    emit(skipped(clause, ctx, NEEDS_TEST_LOAD))
                    continue
                if not ids_found:  # the first START: ids above the unit's floor (10)
                    ids_found = True
                    ctx.ids_found = _find_ids(ctx, report)
            emit(_run(clause, ctx, report))
            report.info = ctx.info
    finally:
        if ctx.stimulated:
            _stop_quietly(ctx)
    return report


def _run(clause: Clause, ctx: Context, report: Report) -> list[Row]:
    """The clause's rows; a clause that drove current is followed by a return to IDLE."""
    from .sessions import to_idle

    try:
        try:
            return clause.run(ctx)
        except (Failed, NoSession) as err:
            return failed(clause, ctx, str(err))
        finally:
            if clause.stimulating:
                to_idle(ctx, f"the {clause.name} clause")
    except PortLost as err:
        report.unreachable = str(err)
        return failed(clause, ctx, f"the port failed: {err}")
    finally:
        if ctx.unreachable is not None:
            report.unreachable = ctx.unreachable


def _find_ids(ctx: Context, report: Report) -> str:
    from .sessions import find_free_ids

    try:
        return find_free_ids(ctx)
    except PortLost as err:
        report.unreachable = str(err)
        return f"the port failed: {err}"


def _stop_quietly(ctx: Context) -> None:
    """Whatever happened, a STOP goes out last (it is harmless in IDLE)."""
    try:
        ctx.port.write(encode(Stop(seq=ctx.port.next_seq(), reason=StopReason.HOST_SHUTDOWN)))
    except PortLost:
        pass


class OpenError(Exception):
    """The port could not be opened. ``not_found``: it does not exist (bad usage),
    rather than existing and failing."""

    def __init__(self, message: str, *, not_found: bool) -> None:
        super().__init__(message)
        self.not_found = not_found


def open_port(url: str) -> Any:
    """``serial.serial_for_url`` at 115200 8N1, exclusively for a device path; knows
    ``sim://``. Raises ``OpenError`` with a one-line reason."""
    import serial

    url = url.strip()
    if not url:
        raise OpenError("no port given", not_found=True)
    if url.lower().startswith("sim:"):
        import estim.sim  # noqa: F401  (registers sim://)
    try:
        return serial.serial_for_url(
            url, baudrate=115_200, timeout=0, exclusive=None if "://" in url else True
        )
    except (serial.SerialException, OSError, ValueError) as err:
        code = getattr(err, "errno", None)
        text = re.sub(r"^\[Errno \d+\] ", "", " ".join(str(err).split()))
        if url.lower().startswith("sim:"):  # the simulator's own words say more
            raise OpenError(text if url in text else f"{url}: {text}", not_found=True) from None
        if code in (errno.EBUSY, errno.EAGAIN) or "lock" in text or "busy" in text.lower():
            raise OpenError(
                f"port {url} is busy: another program has it open", not_found=False
            ) from None
        if code == errno.ENOENT or "No such file" in text:
            raise OpenError(f"port {url} does not exist", not_found=True) from None
        if "protocol" in text and "not known" in text:
            raise OpenError(f"{url}: unknown URL scheme", not_found=True) from None
        if code == errno.ECONNREFUSED or "Connection refused" in text:
            raise OpenError(f"nothing is listening at {url}", not_found=True) from None
        if isinstance(err, ValueError):
            raise OpenError(f"{url}: {text}", not_found=True) from None
        raise OpenError(f"cannot open {url}: {text}", not_found=False) from None
