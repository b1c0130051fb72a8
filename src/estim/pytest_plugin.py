"""pytest plugin: a simulated estim unit for your tests, or your real one.

Installed with estim (entry point ``pytest11``). Fixtures (``pytest --fixtures -v``
shows each one's full documentation):

``estim_clock``
    a ``ManualClock``: virtual time shared by the unit and any host on it.
``estim_unit``
    a ``SimulatedUnit`` on that clock, set up by ``@pytest.mark.estim_unit(...)``
    with the simulator's options (README, "The simulated unit, for your tests"):
    unit limits, faults in every session, and the link options ``estim_url`` uses.
``estim_url``
    the unit served in-process: a ``sim://`` URL for ``estim.connect`` or pyserial,
    carrying the marker's link options as its query.
``estim_port``
    the real unit's port given with ``--estim-port`` (``/dev/ttyUSB0``, ...);
    tests that use it are skipped when the option is absent.

The marker's options are parsed by ``estim.sim.options.parse_options``, the parser
of ``sim://`` URL queries and ``estim simulate``, so the three take the same names
and values. A bad option fails the test at setup with one line naming it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest

if TYPE_CHECKING:
    from estim.clock import ManualClock
    from estim.sim import SimSpec, SimulatedUnit

MARK = "@pytest.mark.estim_unit"


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
        "markers",
        "estim_unit(OPTION=VALUE, ...): the simulated unit of the estim_unit and estim_url "
        "fixtures, with the options of sim:// URLs and `estim simulate`: unit limits "
        "(channels=4, amplitude_max_ma=30, ...), faults in every session "
        "(lead_off_at='30:1', estop_at=45, ...) and link options for estim_url "
        "(drop=0.01, cut_at='10:5', seed=7, ...)",
    )


# -- the marker ------------------------------------------------------------------------------


def _texts(name: str, value: object) -> list[str]:
    """A marker value as the option's text(s): a list or tuple gives the option once
    per item (for the options that may repeat: faults and ``cut_at``)."""
    values: Sequence[object] = value if isinstance(value, list | tuple) else [value]
    out = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise ValueError(f"sim option {name}={item!r} is not a number or text")
        out.append(str(item))
    return out


def parse_marker(args: Sequence[object], kwargs: Mapping[str, object]) -> tuple[SimSpec, str]:
    """The unit a marker asks for, and the query of the link options for its URL.

    Options are the simulator's (``estim.sim.options``), in the units people use.
    For compatibility a ``UnitConfig`` field that is not also an option name
    (``dwell_min_ms=2000``, ``serial_number="X"``, ``waveforms=0b011``) sets that
    field, in wire units. Raises ``ValueError`` naming the option."""
    from estim.sim import UnitConfig
    from estim.sim.options import _UNIT_OPTIONS, ALL_OPTIONS, LINK_OPTIONS, parse_options

    if args:
        raise ValueError(
            f"takes keyword options only (OPTION=VALUE), not {', '.join(map(repr, args))}"
        )
    config_fields = {f.name for f in fields(UnitConfig)}
    options: dict[str, list[str]] = {}
    direct: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in ALL_OPTIONS:
            options[name] = _texts(name, value)
        elif name in config_fields:
            direct[name] = value
        else:
            raise ValueError(
                f"unknown option {name!r}; known: {', '.join(sorted(ALL_OPTIONS))} "
                "(or a UnitConfig field, in wire units)"
            )
    spec = parse_options(options)
    for name in direct:
        for option in options:
            target = _UNIT_OPTIONS.get(option, ("",))[0]
            if target == name:
                raise ValueError(f"{name} and {option} both set UnitConfig.{name}; give one")
    try:
        spec.config = replace(spec.config, **direct)
    except (TypeError, ValueError) as err:
        raise ValueError(str(err)) from None
    link = [
        (name, text) for name, texts in options.items() if name in LINK_OPTIONS for text in texts
    ]
    return spec, urlencode(link)


def _marked(request: pytest.FixtureRequest) -> tuple[SimSpec, str]:
    marker = request.node.get_closest_marker("estim_unit")
    try:
        return parse_marker(marker.args if marker else (), marker.kwargs if marker else {})
    except ValueError as err:
        problem = str(err)
    pytest.fail(f"{MARK}: {problem}", pytrace=False)  # outside the except: no chained traceback


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def estim_clock() -> ManualClock:
    """A ``ManualClock``: virtual time shared by ``estim_unit`` and any host on it.
    A 10-minute session runs in seconds; ``estim_clock.advance(seconds)`` moves it.

    Time moves only when every participant (the unit's thread, the host's I/O
    thread, its journal writer) is waiting: a host that waits for something (a
    session's ``wait()``, an answer) drives it to the next deadline, and every
    heartbeat and watchdog check happens at its exact virtual instant.
    ``estim_clock.now()`` reads it (seconds from 0).
    """
    from estim.clock import ManualClock

    return ManualClock()


@pytest.fixture
def estim_unit(request: pytest.FixtureRequest, estim_clock: ManualClock) -> SimulatedUnit:
    """A ``SimulatedUnit`` on ``estim_clock``, set up by ``@pytest.mark.estim_unit(...)``
    with the simulator's options: unit limits (``channels=4, amplitude_max_ma=30``),
    faults in every session (``lead_off_at="30:1"``) and link options for
    ``estim_url`` (``drop=0.01``). ``pytest --fixtures -v`` lists every option and
    the methods that inject faults from the test (``inject_in_session``, ...).

    The options are README's (section "The simulated unit, for your tests"), with
    the names and values of ``sim://`` URL queries and ``estim simulate``:

    - unit limits, in the units people use: ``channels``, ``amplitude_max_ma``,
      ``amplitude_step_ma``, ``slew_ma_per_s``, ``frequency_min_hz``,
      ``frequency_max_hz``, ``pulse_width_min_us``, ``pulse_width_max_us``,
      ``watchdog_min_ms``, ``watchdog_max_ms``, ``dwell_min_s``, ``dwell_max_s``,
      ``ramp_max_s``, ``lead_off_ohm``, ``compliance_v``, ``impedance_ohm``,
      ``model``, ``serial``;
    - faults, in seconds after output starts, in every session:
      ``lead_off_at="30:1"`` (SECONDS[:CHANNEL]), ``impedance_at="30:1:25000"``
      (SECONDS:CHANNEL:OHM), ``over_current_at="30:1"``, ``estop_at=30``,
      ``reset_at=30``, ``internal_at=30``; a list gives several
      (``estop_at=[20, 90]``);
    - link options, which apply to ``estim_url`` (not to this object): ``drop``,
      ``corrupt``, ``duplicate``, ``delay`` (probabilities), ``delay_ms``,
      ``cut_at="SECONDS:DURATION"`` (after the connection opens), ``baud``, and
      ``seed`` (also the unit's).

    Example: ``@pytest.mark.estim_unit(channels=4, amplitude_max_ma=30,
    lead_off_at="30:1", drop=0.01, seed=7)``. A ``UnitConfig`` field that is not an
    option name sets that field in wire units (``dwell_min_ms=2000``,
    ``serial_number="X"``, ``waveforms=0b011``). A bad option fails the test at
    setup with one line naming it.

    From the test, the unit can also be acted on directly: ``inject_in_session(
    seconds, action, *args)`` scripts an action that many seconds after output
    starts, in every session; ``inject_at(clock_time, action, *args)`` at a time of
    ``estim_clock``; actions are ``"lead_off", CH``, ``"impedance", CH, OHM``,
    ``"over_current", CH``, ``"estop"``, ``"mark"``, ``"reset"``, ``"internal"``.
    Now: ``pull_electrode(CH)``, ``set_impedance(CH, OHM)``, ``over_current(CH)``,
    ``press(Button.ESTOP or Button.MARK)`` (``estim.protocol.Button``),
    ``internal_fault()``, ``reset()`` (a power cycle). To observe it:
    ``state``, ``faults``, ``output_ua(CH)``, ``output_on``,
    ``events("output_on" | "output_off" | "fault" | "boot" | ...)`` (its log, with
    virtual times ``.t`` and ``.data``), ``requests_seen[MessageType.START]``.
    """
    spec, _ = _marked(request)
    return spec.build_unit(estim_clock)


@pytest.fixture
def estim_url(request: pytest.FixtureRequest, estim_unit: SimulatedUnit) -> Iterator[str]:
    """``estim_unit`` served in this process: a ``sim://unitN`` URL for ``estim.connect``,
    with the marker's link options as its query (``sim://unit1?drop=0.01&seed=7``).

    pyserial opens it too (``serial.serial_for_url(url)``, after ``import
    estim.sim``); one connection at a time, as a serial port. The link options
    (``drop``, ``corrupt``, ``duplicate``, ``delay``, ``delay_ms``, ``cut_at``,
    ``baud``, ``seed``) apply to every connection; without them the URL has no
    query, and a test may add its own (``f"{estim_url}?cut_at=5:100"``). The unit
    is powered off when the test ends.
    """
    from estim.sim import serve

    _, query = _marked(request)
    with serve(estim_unit) as url:
        yield f"{url}?{query}" if query else url


@pytest.fixture
def estim_port(request: pytest.FixtureRequest) -> str:
    """The real unit's port, given with ``pytest --estim-port /dev/ttyUSB0``; tests
    that use it are skipped without that option.

    So one suite runs on the simulator everywhere and on hardware on the bench.
    Connect a resistor to every channel, never a person.
    """
    port = request.config.getoption("--estim-port")
    if not port:
        pytest.skip("no real unit: pass --estim-port PORT to run this test against one")
    return str(port)
