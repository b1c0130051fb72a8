"""``estim conformance``: the vectors it sends, judged by a unit's own limits; the
suite against the simulated unit on a manual clock, over a real pty in real time,
and against deliberately broken units; the command line."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import pytest
from click.testing import CliRunner, Result

from estim.cli import cli
from estim.clock import ManualClock
from estim.conformance import boundaries, ramps, rig as rig_clauses, unseen
from estim.conformance.clause import FAIL, NEEDS_TEST_LOAD, PASS, SKIP, Context, Rig, Row
from estim.conformance.framing import GAP_RULE
from estim.conformance.limits import channel_config, session_shape
from estim.conformance.matching import describe, matches
from estim.conformance.port import UnitPort
from estim.conformance.replies import REFERENCE, UnitModel, reference_reply
from estim.conformance.requests import INVALID_RULES, PROBE_RULE, REQUEST_RULES
from estim.conformance.sequences import sequence_vectors
from estim.conformance.suite import Report, check, clauses, open_port
from estim.conformance.vectors import invalid_vectors, valid_vectors
from estim.conformance.watchdog import FEED_RULE, WATCHDOG_RULE
from estim.protocol import (
    BootCause,
    Button,
    Decoder,
    ErrorCode,
    Field,
    FrameError,
    GetStatus,
    Hello,
    Kind,
    Message,
    MessageType,
    Nack,
    Start,
    State,
    encode,
    message_from_dict,
    message_to_dict,
)
from estim.sim import OPEN_CIRCUIT_OHM, SimulatedUnit, UnitConfig, serve
from estim.sim.unit import Refused

from . import vectors
from .harness import Harness
from .procs import SimProcess

#: units unlike the reference one, each judged by its own DEVICE_INFO
OTHER_UNITS = {
    "4 channels, 100 mA": UnitConfig(channels=4, amplitude_max_ua=100_000),
    "1 channel, 1 mA steps": UnitConfig(
        channels=1, amplitude_max_ua=100_000, amplitude_step_ua=1_000
    ),
    "8 channels, slow slew, short ramps": UnitConfig(
        channels=8, slew_max_ua_per_s=2_000, ramp_max_ms=4_000, watchdog_max_ms=900
    ),
    "1 uA steps, narrow frequencies": UnitConfig(
        amplitude_step_ua=1, amplitude_max_ua=5_000, frequency_min_dhz=50, frequency_max_dhz=60
    ),
    "2 s minimum dwell": UnitConfig(dwell_min_ms=2_000),
}
UNITS = {"reference": UnitConfig(), **OTHER_UNITS}


# --- the vectors moved into the package ---------------------------------------------


def test_the_package_builds_the_committed_vectors() -> None:
    built = valid_vectors()
    for name in ("requests", "responses", "events"):
        assert built[name] == vectors.load(name)
    assert invalid_vectors() == vectors.invalid()
    assert sequence_vectors() == vectors.sequences()


def test_the_reference_model_is_the_typical_device_info() -> None:
    typical = next(v for v in vectors.load("responses") if v["name"] == "DEVICE_INFO typical")
    assert (
        message_to_dict(replace(REFERENCE.info, seq=typical["message"]["seq"]))
        == (typical["message"])
    )
    assert dict(REFERENCE.targets) == {1: 12_000}


def test_the_simulated_unit_reports_what_its_config_says() -> None:
    for config in UNITS.values():
        assert config.device_info().channel_count == config.channels


@pytest.mark.parametrize("unit", list(UNITS), ids=list(UNITS))
def test_request_replies_follow_the_units_own_limits(unit: str) -> None:
    """The replies computed for a unit's DEVICE_INFO agree with the simulated unit
    built with those limits, vector by vector (two readings of the spec)."""
    config = UNITS[unit]
    info = config.device_info()
    target = session_shape(info, info.dwell_max_ms).amplitude_ua
    model = UnitModel(info, {1: target})
    for vector in vectors.load("requests"):
        h = Harness(config)
        h.request(channel_config(info, 1, target), seq=0x7777)
        answers = [
            m
            for m in h.send_raw(bytes.fromhex(vector["hex"]))
            if m.KIND == Kind.RESPONSE and m.seq == vector["message"]["seq"]
        ]
        assert len(answers) == 1, vector["name"]
        expected = reference_reply(vector["message"], model)
        got = message_to_dict(answers[0])
        assert {k: got.get(k) for k in expected} == expected, (unit, vector["name"])


def test_replies_differ_where_the_limits_differ() -> None:
    """A 4-channel 100 mA unit is not judged by the reference unit's limits."""
    info = OTHER_UNITS["4 channels, 100 mA"].device_info()
    big = message_to_dict(
        replace(
            message_from_dict(vectors.load("requests")[9]["message"]),  # CONFIGURE typical
            amplitude_ua=80_000,
        )
    )
    assert reference_reply(big)["error"] == "OUT_OF_RANGE"
    assert reference_reply(big, UnitModel(info, {}))["type"] == "ACK"
    mask = {"type": "START", "session_id": 7, "dwell_ms": 480_000, "ramp_ms": 5_000}
    mask |= {"watchdog_ms": 500, "channel_mask": 0b1100}
    assert reference_reply(mask)["field"] == "CHANNEL_MASK"
    assert reference_reply(mask, UnitModel(info, {1: 12_000})) == {
        "type": "NACK",
        "error": "NOT_CONFIGURED",
        "field": "CHANNEL",
        "channel": 3,
        "state": "IDLE",
    }


def test_a_unit_without_a_waveform_refuses_it_by_name() -> None:
    info = UnitConfig(waveforms=0b001, modes=0b101).device_info()
    vector = next(
        v for v in vectors.load("requests") if v["name"] == "CONFIGURE_CHANNEL waveform=MONOPHASIC"
    )
    assert reference_reply(vector["message"], UnitModel(info))["field"] == "WAVEFORM"
    burst = next(v for v in vectors.load("requests") if v["name"] == "CONFIGURE_CHANNEL mode=BURST")
    assert reference_reply(burst["message"], UnitModel(info))["field"] == "MODE"


@pytest.mark.parametrize("unit", list(UNITS), ids=list(UNITS))
def test_sequences_for_a_units_limits_run_back_to_back_on_it(unit: str) -> None:
    config = UNITS[unit]
    h = Harness(config)
    for sequence in sequence_vectors(config.device_info()):
        for step in sequence["steps"]:
            got = [message_to_dict(m) for m in h.send_raw(bytes.fromhex(step["hex"]))]
            assert matches(step["expect"], got), (unit, sequence["name"], step, got)
    assert h.unit.state == 0


def test_sequence_expectations_list_every_channel_of_the_unit() -> None:
    info = OTHER_UNITS["4 channels, 100 mA"].device_info()
    impedance = next(s for s in sequence_vectors(info) if s["section"] == "5.2")
    status = impedance["steps"][0]["expect"][0]
    assert len(status["channels"]) == 4


def test_describe_renders_a_frame_on_one_line() -> None:
    nack = {"type": "NACK", "seq": 5, "error": "OUT_OF_RANGE", "field": "DWELL", "channel": 0}
    assert describe(nack) == "NACK(seq=5, error=OUT_OF_RANGE, field=DWELL, channel=0)"
    assert describe(nack, {"type": "NACK", "error": "X"}) == "NACK(error=OUT_OF_RANGE)"
    assert describe(nack, {"type": "ACK", "seq": 5}) == describe(nack)
    assert describe(None) == "nothing"
    event = {"type": "STOPPED", "session_id": 0x5E, "delivered_ms": 480_000}
    assert describe(event) == "STOPPED(session_id=0x0000005E, delivered_ms=480000)"


# --- the suite against the simulated unit, in virtual time -----------------------------------


def run_suite(
    unit: SimulatedUnit, *, confirm: bool = True, seed: int | None = 1, rig: Rig | None = None
) -> tuple[Report, list[int]]:
    """The whole suite on ``unit`` served as ``sim://`` on its manual clock; also
    returns how many rows had been judged each time the suite asked to confirm."""
    asked: list[int] = []
    rows: list[Row] = []

    def answer() -> bool:
        asked.append(len(rows))
        return confirm

    with serve(unit) as url:
        port = open_port(url)
        try:
            report = check(port, name=url, confirm=answer, on_row=rows.append, seed=seed, rig=rig)
        finally:
            port.close()
    assert rows == report.rows
    return report, asked


def failures(report: Report) -> dict[str, str]:
    return {row.rule: row.seen for row in report.rows if row.result == FAIL}


#: the reference unit with a 2 s smallest dwell: the session clause in 2 s, not 60
FAST = UnitConfig(dwell_min_ms=2_000)


def manual_unit(
    config: UnitConfig | None = FAST, cls: type[SimulatedUnit] = SimulatedUnit
) -> SimulatedUnit:
    return cls(config, clock=ManualClock())


#: the rows that need a test load that can open a channel (``Rig``)
RIG_RULES = {
    rule
    for clause in rig_clauses.CLAUSES
    for _, rule in clause.rules(
        Context(UnitPort(None, ManualClock(), random.Random(0)), ManualClock())
    )
}


def rigged(unit: SimulatedUnit) -> Rig:
    """Give ``unit`` what a lead-off rig does: channel 2 open from power-up, and
    channel 1 opening a second after the smallest dwell, in every session."""
    unit.impedance_ohm[1] = OPEN_CIRCUIT_OHM
    opens = unit.config.dwell_min_ms / 1000 + 1
    unit.inject_in_session(opens, "lead_off", 1)
    return Rig(open_channel=2, lead_off=(opens, 1))


def test_the_whole_suite_passes_on_the_simulated_unit() -> None:
    unit = manual_unit(UnitConfig())  # as it comes: a smallest dwell of 60 s
    report, asked = run_suite(unit, rig=rigged(unit))
    assert failures(report) == {}
    assert {row.result for row in report.rows} == {PASS}
    assert report.exit_code == 0
    assert report.test_load
    assert len(report.rows) == len(ALL_RULES)
    assert [(row.section, row.rule) for row in report.rows] == ALL_RULES
    assert len(asked) == 1  # asked once, before the first clause that drives current
    first_stimulating = next(
        i for i, row in enumerate(report.rows) if row.rule == REQUEST_RULES["START"][1]
    )
    assert asked[0] <= first_stimulating
    assert report.as_json()["not_checked"]  # what no wire test sees, said plainly
    # it left the unit idle, nothing latched, output off
    assert unit.state == State.IDLE
    assert not unit.faults
    assert not unit.output_on
    # 60 s of smallest dwell and every watchdog, in virtual time
    assert unit.clock.now() > 60


ALL_RULES = [
    (section, rule)
    for clause in clauses()
    for section, rule in clause.rules(
        Context(UnitPort(None, ManualClock(), random.Random(0)), ManualClock())
    )
]


@pytest.mark.parametrize("unit", list(OTHER_UNITS), ids=list(OTHER_UNITS))
def test_other_units_are_judged_by_their_own_limits(unit: str) -> None:
    config = OTHER_UNITS[unit]
    report, _ = run_suite(manual_unit(config))
    assert failures(report) == {}
    skipped = {row.rule for row in report.rows if row.result == SKIP}
    if config.channels == 1:  # no channel can be unconfigured if the suite needs channel 1
        assert skipped == {PROBE_RULE[1]} | RIG_RULES
    else:
        assert skipped == RIG_RULES  # no rig: lead-off is not checked, and the report says so
    assert report.exit_code == 0


def test_the_suite_passes_on_a_unit_whose_clock_wraps_during_the_run() -> None:
    unit = manual_unit(replace(FAST, clock_start_ms=2**32 - 3_000))
    report, _ = run_suite(unit)
    assert failures(report) == {}
    assert unit.clock.now() > 3  # the wrap came mid-run


def test_a_second_run_on_the_same_unit_passes_too() -> None:
    """No reboot between runs: fresh seqs and session ids, so nothing of the first
    run is taken for a copy, and no START names a session that has ended."""
    unit = manual_unit()
    with serve(unit) as url:
        for seed in (1, 2, None):
            port = open_port(url)
            try:
                report = check(port, confirm=lambda: True, seed=seed)
            finally:
                port.close()
            assert failures(report) == {}, seed


def test_a_channel_configured_before_the_run_is_judged_as_configured() -> None:
    """Configurations survive and cannot be undone: START vectors are judged by the
    channels as the suite found them, and NOT_CONFIGURED cannot be exercised."""
    unit = manual_unit()
    unit.receive(encode(channel_config(unit.config.device_info(), 2, 20_000)))
    report, _ = run_suite(unit)
    assert failures(report) == {}
    probe = next(row for row in report.rows if row.rule == PROBE_RULE[1])
    assert probe.result == SKIP
    assert "every channel was configured before this run" in probe.seen


def test_output_and_a_fault_left_by_another_host_are_cleaned_up_first() -> None:
    unit = manual_unit()
    h_config = channel_config(unit.config.device_info(), 1, 12_000)
    unit.receive(encode(h_config))
    unit.receive(
        encode(
            Start(
                seq=2,
                session_id=77,
                dwell_ms=600_000,
                ramp_ms=5_000,
                watchdog_ms=2_000,
                channel_mask=1,
            )
        )
    )
    assert unit.state == State.RAMPING_UP
    report, _ = run_suite(unit)
    idle = next(
        row
        for row in report.rows
        if row.rule == "STATUS in IDLE: one entry per channel, output zero, no impedance"
    )
    assert idle.result == PASS
    assert "output was on (session 0x0000004D): stopped it" in idle.seen
    assert failures(report) == {}

    unit = manual_unit()
    unit.press(Button.ESTOP)
    report, _ = run_suite(unit, confirm=False)
    idle = next(row for row in report.rows if row.section == "5.2, 6")
    assert "a fault was latched (faults 0b1000): cleared it" in idle.seen


def test_without_a_test_load_no_start_reaches_the_unit() -> None:
    unit = manual_unit()
    report, asked = run_suite(unit, confirm=False)
    assert len(asked) == 1
    assert unit.requests_seen[MessageType.START] == 0
    assert not any(e.kind == "output_on" for e in unit.log)
    assert failures(report) == {}
    skipped = [row for row in report.rows if row.result == SKIP]
    assert skipped
    assert {row.seen for row in skipped} <= {
        NEEDS_TEST_LOAD,
        "no clause drove current",
        "0 event(s) seen: events need output",
    }
    assert report.exit_code == 1
    assert not report.test_load


# --- the suite can fail -------------------------------------------------------------------------


class FeedsOnStatus(SimulatedUnit):
    """Broken: a GET_STATUS feeds the watchdog, so a status display keeps output alive."""

    def _feeds_watchdog(self, message: Message) -> bool:
        return super()._feeds_watchdog(message) or (
            isinstance(message, GetStatus) and self._session is not None
        )


class NacksMalformedStop(SimulatedUnit):
    """Broken: a STOP that fails a format check is NACKed like any request, and
    output stays on."""

    def _bad_frame(self, err: FrameError, now: int) -> None:
        if err.kind == Kind.REQUEST and err.msg_type == MessageType.STOP and err.seq is not None:
            error = (
                ErrorCode.UNSUPPORTED_VERSION if err.reason == "version" else ErrorCode.BAD_PAYLOAD
            )
            if err.reason == "flags":
                error = ErrorCode.BAD_FLAGS
            field = Field.VERSION if err.reason == "version" else Field.NONE
            if err.reason != "length":
                self._outbox += encode(
                    Nack(
                        seq=err.seq,
                        request_type=err.msg_type,
                        error=error,
                        field=field,
                        channel=0,
                        state=self._state,
                    )
                )
            return
        super()._bad_frame(err, now)


class IgnoresTheGap(SimulatedUnit):
    """Broken: a partial frame is kept however long the line is silent."""

    def _boot(self, cause: BootCause, now: int) -> None:
        super()._boot(cause, now)
        self._decoder = Decoder(gap_s=1e9)


class Mute(SimulatedUnit):
    """Not a unit at all: it never answers."""

    def read_output(self) -> bytes:
        super().read_output()
        return b""


def test_a_unit_whose_watchdog_a_status_poll_feeds_fails_9_1() -> None:
    report, _ = run_suite(manual_unit(cls=FeedsOnStatus))
    failed = failures(report)
    assert set(failed) == {FEED_RULE[1], WATCHDOG_RULE[1]}  # the trip clause polls STATUS too
    assert failed[WATCHDOG_RULE[1]].startswith("no FAULT within 200 ms + 1000 ms of the last")
    assert failed[FEED_RULE[1]].startswith("GET_STATUS fed it: no trip ")
    assert "(watchdog 200 ms, each sent every 50 ms)" in failed[FEED_RULE[1]]
    assert report.exit_code == 4


def test_a_unit_that_nacks_a_malformed_stop_fails_3_4() -> None:
    report, _ = run_suite(manual_unit(cls=NacksMalformedStop))
    failed = failures(report)
    stop_sequences = {
        s["name"] for s in sequence_vectors() if "STOP" in s["name"] and s["section"] == "3.4"
    }
    assert (
        set(failed)
        == {INVALID_RULES[reason][1] for reason in ("length", "version", "flags", "payload")}
        | stop_sequences
    )
    line = failed[
        "a STOP without its reason byte while output is on: ACK, output off, STOPPED reason 0"
    ]
    assert line.startswith("step 3 (STOP without its reason byte): expected ACK(seq=")
    assert "request_type=STOP, state=IDLE), STOPPED(session_id=0x" in line
    assert ", reason=UNSPECIFIED), got NACK(seq=" in line
    assert line.endswith(
        "request_type=STOP, error=BAD_PAYLOAD, field=NONE, channel=0, state=RAMPING_UP)"
    )
    flags = failed[INVALID_RULES["flags"][1]]
    assert flags.startswith(
        "flags: STOP with flags 0x01: expected ACK(seq=9, request_type=STOP, state=IDLE), got NACK("
    )
    assert report.exit_code == 4
    assert report.rows[-1].result == PASS  # its frames were still valid ones


def test_a_unit_that_ignores_the_inter_byte_gap_fails_it() -> None:
    report, _ = run_suite(manual_unit(cls=IgnoresTheGap), confirm=False)
    failed = failures(report)
    assert set(failed) == {GAP_RULE[1]}
    assert "a partial frame must be dropped after 50 ms" in failed[GAP_RULE[1]]


def test_a_unit_that_never_answers_is_unreachable() -> None:
    report, asked = run_suite(manual_unit(cls=Mute))
    assert report.rows[0].result == FAIL
    assert report.rows[0].seen == "no answer to 4 HELLOs: is this an estim unit?"
    assert {row.result for row in report.rows[1:]} == {SKIP}
    assert {row.seen for row in report.rows[1:]} == {
        "the unit could not be reached: no answer to 4 HELLOs"
    }
    assert asked == []  # never asked about a test load
    assert report.exit_code == 5


# --- the command line -------------------------------------------------------------------------


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("ESTIM_PORT", raising=False)
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(cli, ["conformance", *args], catch_exceptions=False)


RIG_OPTIONS = ("--open-channel", "2", "--lead-off-at", "3:1")


@pytest.mark.estim_unit(dwell_min_ms=2_000, open_channel=2, lead_off_at="3:1")
def test_the_command_prints_the_table_and_exits_0(runner: CliRunner, estim_url: str) -> None:
    result = invoke(runner, "--port", estim_url, "--test-load", *RIG_OPTIONS)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("PASS  4         HELLO(1, 1) is answered DEVICE_INFO")
    assert "-- estim-sim SIM-0001 (firmware sim-1.0, simulated)" in lines[0]
    rows, summary, tail = (
        lines[: len(ALL_RULES)],
        lines[len(ALL_RULES)],
        lines[len(ALL_RULES) + 1 :],
    )
    assert all(line[:4] == "PASS" for line in rows)
    assert (
        summary == f"conformance of SIM-0001: {len(ALL_RULES)} clauses passed, 0 failed, 0 skipped"
    )
    # what the wire cannot show, said plainly, each with how a vendor checks it
    assert tail[0] == "not visible on the wire (check them on a measured test load):"
    assert len(tail) == 1 + len(unseen.ALWAYS)
    assert tail[1].startswith("  - the current delivered is the amplitude STATUS reports")
    assert result.stderr == ""


def test_without_a_rig_lead_off_is_listed_as_not_checked(runner: CliRunner) -> None:
    with serve(manual_unit()) as url:
        result = invoke(runner, "--port", url, "--test-load", "--json")
    document = json.loads(result.stdout)
    assert result.exit_code == 0
    assert document["skipped"] == len(RIG_RULES)
    properties = [item["property"] for item in document["not_checked"]]
    assert properties[-2:] == [unseen.LEAD_OFF_DURING_OUTPUT[0], unseen.LEAD_OFF_AT_START[0]]


@pytest.mark.estim_unit(dwell_min_ms=2_000, open_channel=2, lead_off_at="3:1")
def test_the_command_prints_one_json_document(runner: CliRunner, estim_url: str) -> None:
    result = invoke(runner, "--port", estim_url, "--test-load", "--json", *RIG_OPTIONS)
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert (document["passed"], document["failed"], document["skipped"]) == (len(ALL_RULES), 0, 0)
    assert document["exit_code"] == 0
    assert document["test_load"] is True
    assert document["unit"]["serial_number"] == "SIM-0001"
    assert document["unit"]["dwell_min_ms"] == 2_000
    assert document["rows"][0] == {
        "section": "4",
        "rule": "HELLO(1, 1) is answered DEVICE_INFO, protocol version 1",
        "result": "PASS",
        "seen": "estim-sim SIM-0001 (firmware sim-1.0, simulated)",
        "tried": [],
        "window": "exact",
    }
    # per clause: the values tried and the window applied
    rows = {row["rule"]: row for row in document["rows"]}
    dwell = rows[boundaries.DWELL_RULE[1]]
    assert dwell["tried"] == [
        "dwell_ms=1999 (min - 1): NACK(error=OUT_OF_RANGE, field=DWELL, channel=0)",
        "dwell_ms=2000 (min): ACK",
        "dwell_ms=600000 (max): ACK",
        "dwell_ms=600001 (max + 1): NACK(error=OUT_OF_RANGE, field=DWELL, channel=0)",
    ]
    completed = rows[ramps.COMPLETED_RULE[1]]
    assert completed["window"] == (
        "COMPLETED at t0 + 2000 +-1 ms, delivered_ms exactly 2000; every STATUS IDLE from "
        "the deadline on and not before"
    )
    assert rows[rig_clauses.LEAD_OFF_RULE[1]]["window"] == (
        "FAULT at t0 + 3000 .. 3031 ms (10 ms + 1 tick + 20 ms for the rig)"
    )


def test_without_test_load_and_no_terminal_it_drives_no_current(
    runner: CliRunner, estim_url: str, estim_unit: SimulatedUnit
) -> None:
    result = invoke(runner, "--port", estim_url)
    assert result.exit_code == 1
    assert (
        "SKIP  9.1       nothing but a HEARTBEAT naming the live session feeds the watchdog -- drives current"
        in result.stdout
    )
    assert result.stderr.startswith(
        "the clauses that drive current were skipped: run again with --test-load"
    )
    assert estim_unit.requests_seen[MessageType.START] == 0


def test_a_failed_clause_exits_4(runner: CliRunner) -> None:
    unit = manual_unit(UnitConfig(dwell_min_ms=2_000), cls=FeedsOnStatus)
    with serve(unit) as url:
        result = invoke(runner, "--port", url, "--test-load")
    assert result.exit_code == 4
    lines = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(lines) == 2
    line = lines[-1]
    assert line.startswith(
        "FAIL  9.1       nothing but a HEARTBEAT naming the live session feeds the watchdog -- GET_STATUS fed it"
    )
    assert "2 failed" in next(x for x in result.stdout.splitlines() if x.startswith("conformance"))


def test_clause_runs_only_the_clauses_named(runner: CliRunner) -> None:
    names = invoke(runner, "--clause", "list")
    assert names.exit_code == 0
    assert "gap" in names.stdout.splitlines()
    assert "handshake" not in names.stdout.splitlines()  # it always runs
    with serve(manual_unit()) as url:
        result = invoke(runner, "--port", url, "--clause", "gap", "--json")
    document = json.loads(result.stdout)
    sections = [row["rule"] for row in document["rows"]]
    assert GAP_RULE[1] in sections
    assert REQUEST_RULES["HELLO"][1] not in sections
    assert result.exit_code == 1  # nothing that drives current ran


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--clause", "nosuch"), "estim: no clause named 'nosuch'; `--clause list` names them"),
        (("--lead-off-at", "soon"), "estim: --lead-off-at 'soon': expected SECONDS[:CHANNEL]"),
        (("--lead-off-at", "5:9"), "estim: --lead-off-at '5:9': SECONDS must be above 0"),
    ],
)
def test_bad_clause_and_rig_options_exit_2(
    runner: CliRunner, args: tuple[str, ...], message: str
) -> None:
    result = invoke(runner, "--port", "sim://", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message), result.stderr


def test_a_unit_that_never_answers_exits_5(runner: CliRunner) -> None:
    with serve(manual_unit(cls=Mute)) as url:
        result = invoke(runner, "--port", url, "--json")
    assert result.exit_code == 5
    document = json.loads(result.stdout)
    assert document["unreachable"] == "no answer to 4 HELLOs"
    assert document["rows"][0]["result"] == FAIL


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ((), 2, "estim: no unit given: pass --port URL or set ESTIM_PORT"),
        (
            ("--port", "/dev/estim-no-such-port"),
            2,
            "estim: port /dev/estim-no-such-port does not exist",
        ),
        (
            ("--port", "sim://?channels=9"),
            2,
            "estim: sim://?channels=9: sim option channels=9 is outside 1..8",
        ),
        (("--port", "nosuchscheme://x"), 2, "estim: nosuchscheme://x: unknown URL scheme"),
        (
            ("--port", "sim://", "--bogus"),
            2,
            "estim: No such option",
        ),
        (("--port", "sim://nobody"), 2, "estim: sim://nobody: no simulated unit named 'nobody'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    runner: CliRunner, args: tuple[str, ...], code: int, message: str
) -> None:
    result = invoke(runner, *args)
    assert result.exit_code == code
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(message), result.stderr


# --- over a real pty, in real time ------------------------------------------------------------


def estim_command(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "estim", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


@pytest.mark.parametrize("unit", ["python", "c"])
def test_the_suite_passes_over_a_pty_in_real_time(
    unit: str, request: pytest.FixtureRequest
) -> None:
    """What a vendor runs: the command against a unit on a serial port, at its
    smallest dwell of 2 s: ``estim simulate --pty`` in another process, and the C
    reference unit (firmware_protocol/reference/, built with the sanitizers)."""
    # the rig, on the unit's side; a clock that wraps at 2^32 four seconds into the run
    options = ("dwell_min_s=2", "open_channel=2", "lead_off_at=3:1", "clock_start_ms=4294963296")
    if unit == "c":
        binary = request.getfixturevalue("cunit").unit
        sim = SimProcess("--json", *options, command=[str(binary)])
    else:
        sim = SimProcess("--pty", "--json", *options)
    with sim:
        began = time.monotonic()
        run = estim_command(
            "conformance", "--port", sim.port, "--test-load", "--json", *RIG_OPTIONS
        )
        try:
            while run.poll() is None:  # read the unit's log as it goes: a full pipe would stall it
                sim.readline(0.1)
            took = time.monotonic() - began
            stdout, stderr = run.communicate(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
        while sim.readline(0.2) is not None:
            pass
        log = [json.loads(line) for line in sim.lines[1:]]
    document = json.loads(stdout)
    failed = [f"{r['rule']}: {r['seen']}" for r in document["rows"] if r["result"] != PASS]
    assert failed == [], stderr.decode()
    assert run.returncode == 0
    assert document["unit"]["dwell_min_ms"] == 2_000
    assert took < 60, took  # about 6 s on an idle machine
    # the unit's own log: every output on went off again, the last one too
    on = [e for e in log if e["kind"] == "output_on"]
    off = [e for e in log if e["kind"] == "output_off"]
    assert len(on) == len(off) > 20
    completed = [e for e in off if e["reason"] == "completed"]
    assert [e["delivered_ms"] for e in completed] == [2_000]
    assert {e["reason"] for e in off} == {"stop", "completed", "fault:WATCHDOG", "fault:LEAD_OFF"}


def test_sigterm_during_a_session_stops_output_at_once() -> None:
    with SimProcess("--pty", "--json", "dwell_min_s=2") as sim:
        run = estim_command("conformance", "--port", sim.port, "--test-load")
        try:
            started = sim.wait_for(
                lambda e: e["kind"] == "output_on" and e["dwell_ms"] == 2_000, timeout=60
            )
            sent = time.monotonic()
            run.send_signal(signal.SIGTERM)
            off = sim.wait_for(lambda e: e["kind"] == "output_off", timeout=10)
            _, stderr = run.communicate(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
    assert run.returncode == 3
    assert stderr.decode() == "estim: stopped by the operator; a STOP was sent to the unit\n"
    assert off["session_id"] == started["session_id"]
    assert off["reason"] == "stop"  # the suite's STOP, not the unit's watchdog (2 s)
    assert off["t"] - sent < 0.5


class Terminal:
    """``estim ARGS`` with a pseudo-terminal for stdin, stdout and stderr."""

    def __init__(self, *args: str) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "estim", *args], stdin=slave, stdout=slave, stderr=slave
        )
        os.close(slave)
        self.output = b""

    def read_until(self, needle: bytes, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while needle not in self.output:
            left = end - time.monotonic()
            assert left > 0, f"{needle!r} never appeared; the terminal shows {self.output[-800:]!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                assert chunk, f"the terminal closed before {needle!r}: {self.output[-800:]!r}"
                self.output += chunk

    def close(self) -> int:
        """Wait for the command to end, reading all it writes."""
        try:
            while True:
                ready, _, _ = select.select([self.master], [], [], 30)
                assert ready, f"the command never ended: {self.output[-800:]!r}"
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the command closed the terminal
                    break
                if not chunk:
                    break
                self.output += chunk
        finally:
            code = self.proc.wait(30)
            os.close(self.master)
        return code


def test_on_a_terminal_it_asks_before_driving_current() -> None:
    term = Terminal("conformance", "--port", "sim://?dwell_min_s=2")
    try:
        term.read_until(b"Is a test load (not a person) connected to every channel? [y/N]")
        before = term.output
        assert b"PASS  9         answers within 5 ms" in before  # the harmless clauses ran first
        assert b"START vectors" not in before
        os.write(term.master, b"n\r")
    finally:
        code = term.close()
    assert code == 1
    assert b"SKIP  5.1, 5.3  START vectors" in term.output
    assert b"the clauses that drive current were skipped" in term.output


class RefusesHello(SimulatedUnit):
    """Speaks the protocol, but not version 1."""

    def _hello(self, m: Hello) -> Message:
        raise Refused(ErrorCode.UNSUPPORTED_VERSION, Field.VERSION)


def test_a_unit_that_refuses_hello_is_reached_but_fails() -> None:
    report, _ = run_suite(manual_unit(cls=RefusesHello))
    assert report.rows[0].seen.startswith("expected DEVICE_INFO, got NACK(seq=")
    assert "error=UNSUPPORTED_VERSION, field=VERSION, channel=0, state=IDLE)" in report.rows[0].seen
    assert {row.seen for row in report.rows[1:]} == {"no DEVICE_INFO from the unit"}
    assert report.exit_code == 4


class SlowToStart(SimulatedUnit):
    """Deaf for its first 0.3 s (a unit that resets when its port opens)."""

    def receive(self, data: bytes) -> None:
        if self.clock.now() < 0.3:
            return
        super().receive(data)


def test_a_unit_still_starting_gets_the_hello_again() -> None:
    report, _ = run_suite(manual_unit(cls=SlowToStart), confirm=False)
    assert report.rows[0].result == PASS
    assert report.rows[0].seen.endswith("; answered HELLO number 2")
    assert failures(report) == {}
