"""pytest plugin: a simulated estim unit for your tests, or your real one.

Installed with estim (entry point ``pytest11``). Fixtures:

``estim_clock``
    a ``ManualClock``: virtual time shared by the unit and any host on it.
``estim_unit``
    a ``SimulatedUnit`` on that clock. ``@pytest.mark.estim_unit(channels=4, ...)``
    sets its ``UnitConfig`` fields.
``estim_url``
    the unit served in-process: a ``sim://`` URL for ``estim.connect`` or pyserial.
``estim_port``
    the real unit's port given with ``--estim-port`` (``/dev/ttyUSB0``, ...);
    tests that use it are skipped when the option is absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from estim.clock import ManualClock
    from estim.sim import SimulatedUnit


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("estim")
    group.addoption(
        "--estim-port",
        action="store",
        default=None,
        metavar="PORT",
        help="run tests that use the estim_port fixture against this real unit "
        "(e.g. /dev/ttyUSB0); they are skipped otherwise",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "estim_unit(**fields): UnitConfig fields of the simulated unit in estim_unit"
    )


@pytest.fixture
def estim_clock() -> ManualClock:
    from estim.clock import ManualClock

    return ManualClock()


@pytest.fixture
def estim_unit(request: pytest.FixtureRequest, estim_clock: ManualClock) -> SimulatedUnit:
    from estim.sim import SimulatedUnit, UnitConfig

    marker = request.node.get_closest_marker("estim_unit")
    config = UnitConfig(**marker.kwargs) if marker else UnitConfig()
    return SimulatedUnit(config, clock=estim_clock)


@pytest.fixture
def estim_url(estim_unit: SimulatedUnit) -> Iterator[str]:
    from estim.sim import serve

    with serve(estim_unit) as url:
        yield url


@pytest.fixture
def estim_port(request: pytest.FixtureRequest) -> str:
    port = request.config.getoption("--estim-port")
    if not port:
        pytest.skip("no real unit: pass --estim-port PORT to run this test against one")
    return str(port)
