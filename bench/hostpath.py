"""The host core's own Python per heartbeat period, hot (no I/O, no threads): the
core and the Python simulator joined by the test rig (tests/core_rig.py) on a
manual clock; only the core's calls are timed. Input for optimising ``src/``: a
live session's cost per period is this code run cold after each wake-up.

    python bench/hostpath.py [--seconds 600]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.core_rig import Rig, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=300.0, help="session time simulated")
    args = parser.parse_args()
    rig = Rig()
    policy = rig.start(plan(dwell=600))
    rig.run(6.0)
    spent: dict[str, float] = {}
    calls: dict[str, int] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
                calls[name] = calls.get(name, 0) + 1

        return wrapped

    core = rig.core
    for name in ("receive", "tick", "next_deadline", "take"):
        setattr(core, name, timed(name, getattr(core, name)))
    rig.run(args.seconds)
    assert not policy.done
    periods = args.seconds / policy.heartbeat
    total = 0.0
    for name in spent:
        total += spent[name]
        print(
            f"{spent[name] / periods * 1e6:7.2f} us in {calls[name] / periods:5.2f} calls"
            f" per period  core.{name}"
        )
    print(f"{total / periods * 1e6:7.2f} us per heartbeat period in all (hot)")


if __name__ == "__main__":
    main()
