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
#: how much later than the spec allows a unit's answer or event may reach the host
#: before a clause timed on the host's clock calls it late (clauses timed on the
#: unit's own clock, by its events' time_ms, allow nothing of the kind)
ALLOWANCE_S = 0.1


@dataclass(frozen=True)
class Row:
    """One rule of the spec: its section, the rule in a few words, PASS / FAIL /
    SKIP, and what was seen (for a FAIL, expected against got)."""

    section: str
    rule: str
    result: str
    seen: str

    def as_json(self) -> dict[str, str]:
        return {
            "section": self.section,
            "rule": self.rule,
            "result": self.result,
            "seen": self.seen,
        }


class Failed(Exception):
    """A clause cannot go on: every row it has not judged yet fails with this line."""


@dataclass
class Context:
    """What the clauses share: the port, the clock, and what is known of the unit."""

    port: UnitPort
    clock: Clock
    allowance_s: float = ALLOWANCE_S
    info: DeviceInfo | None = None
    #: channels the suite configured, and their target
    targets: dict[int, int] = field(default_factory=dict)
    #: set once output was started, so that a crash or Ctrl-C stops it
    stimulated: bool = False
    #: set when the unit never answered: what happened
    unreachable: str | None = None
    #: every return to IDLE after a clause that started output, and what went wrong
    returns: int = 0
    return_problems: list[str] = field(default_factory=list)

    @property
    def unit(self) -> DeviceInfo:
        if self.info is None:
            raise Failed("no DEVICE_INFO from the unit")
        return self.info

    def model(self) -> UnitModel:
        return UnitModel(self.unit, dict(self.targets))


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
