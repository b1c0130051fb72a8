"""What a clause of the conformance suite is, and what clauses share: a ``Row``
per rule of the spec, the ``Context`` of a run, ``Failed``. Below every clause
module and the suite that runs them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from estim.clock import Clock
from estim.protocol import DeviceInfo

from .port import UnitPort
from .replies import UnitModel

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
#: the reason shown for a clause that drives current, without a confirmed test load
NEEDS_TEST_LOAD = "drives current: needs a test load on every channel (--test-load)"
#: how long past the instant something is due the suite waits for it before calling
#: it missing. Patience, not a window: every time a clause judges is the unit's own
#: time_ms (PROTOCOL.md 9.2), so a slow or loaded host only makes the suite wait.
PATIENCE_S = 1.0
#: one tick of the unit's millisecond clock: the window of every model instant (9.2)
TICK_MS = 1


@dataclass(frozen=True)
class Row:
    """One rule of the spec: its section, the rule in a few words, PASS / FAIL /
    SKIP, what was seen (for a FAIL, expected against got), the values tried and
    the window applied (for a rule judged exactly, "exact")."""

    section: str
    rule: str
    result: str
    seen: str
    tried: tuple[str, ...] = ()
    window: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "section": self.section,
            "rule": self.rule,
            "result": self.result,
            "seen": self.seen,
            "tried": list(self.tried),
            "window": self.window or ("exact" if self.result != SKIP else ""),
        }


@dataclass(frozen=True)
class Rig:
    """What the test load can do besides being a resistor on every channel: a
    channel left open for the whole run (``open_channel``), and a relay that opens
    channel ``lead_off[1]`` ``lead_off[0]`` seconds after output starts and closes
    when output stops (``lead_off``). Without them, the clauses that need them SKIP."""

    open_channel: int | None = None
    lead_off: tuple[float, int] | None = None


class Failed(Exception):
    """A clause cannot go on: every row it has not judged yet fails with this line."""


@dataclass
class Context:
    """What the clauses share: the port, the clock, and what is known of the unit."""

    port: UnitPort
    clock: Clock
    patience_s: float = PATIENCE_S
    rig: Rig = field(default_factory=Rig)
    info: DeviceInfo | None = None
    #: channels the suite configured, and their target
    targets: dict[int, int] = field(default_factory=dict)
    #: set once output was started, so that a crash or Ctrl-C stops it
    stimulated: bool = False
    #: set when the unit never answered: what happened
    unreachable: str | None = None
    #: how the suite chose session ids above the unit's floor (PROTOCOL.md 10)
    ids_found: str = ""
    #: every return to IDLE after a clause that started output, and what went wrong
    returns: int = 0
    return_problems: list[str] = field(default_factory=list)

    @property
    def unit(self) -> DeviceInfo:
        if self.info is None:
            raise Failed("no DEVICE_INFO from the unit")
        return self.info

    def model(self) -> UnitModel:
        opened = frozenset({self.rig.open_channel} if self.rig.open_channel else set())
        return UnitModel(self.unit, dict(self.targets), open_channels=opened)


@dataclass(frozen=True)
class Clause:
    """A group of rows checked together. ``rules`` lists (section, rule) of each row
    ``run`` returns, in order, so that a skipped clause still shows its rows."""

    name: str
    rules: Callable[[Context], list[tuple[str, str]]]
    run: Callable[[Context], list[Row]]
    stimulating: bool = False


def skipped(clause: Clause, ctx: Context, why: str) -> list[Row]:
    return [Row(section, rule, SKIP, why) for section, rule in clause.rules(ctx)]


def failed(clause: Clause, ctx: Context, why: str) -> list[Row]:
    return [Row(section, rule, FAIL, why) for section, rule in clause.rules(ctx)]
