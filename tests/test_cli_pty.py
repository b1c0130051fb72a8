"""``estim run`` in a real terminal (a pseudo-terminal it controls), against
``estim simulate --pty`` in another process. What the unit did is read from the
simulator's own JSON log; waits are for events, with generous real-time limits."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .procs import SimProcess


class Terminal:
    """A child process whose controlling terminal is a pty we hold the master of."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))

        def take_terminal() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "estim", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            preexec_fn=take_terminal,
            env=env,
            close_fds=True,
        )
        os.close(slave)
        self.output = b""
        self.closed = False

    def read_until(self, needle: bytes, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while needle not in self.output:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{needle!r} never appeared; the terminal shows: {self.output[-600:]!r}"
                )
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(
                        f"terminal closed before {needle!r}; it showed: {self.output[-600:]!r}"
                    )
                self.output += chunk

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def hang_up(self) -> None:
        os.close(self.master)
        self.closed = True

    def wait(self, timeout: float = 20.0) -> int:
        if not self.closed:  # keep draining so the child never blocks on a full terminal
            end = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < end:
                ready, _, _ = select.select([self.master], [], [], 0.1)
                if ready:
                    try:
                        self.output += os.read(self.master, 65536)
                    except OSError:
                        break
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self.closed:
            os.close(self.master)
            self.closed = True


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    with SimProcess("--pty", "--json") as process:
        yield process


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = dict(os.environ)
    out["ESTIM_HOME"] = str(tmp_path / "home")
    out["ESTIM_DB"] = str(tmp_path / "estim.db")
    out.pop("ESTIM_PORT", None)
    out.pop("ESTIM_CONFIG", None)
    return out


@pytest.fixture
def terminal(sim: SimProcess, env: dict[str, str]) -> Iterator[Any]:
    opened: list[Terminal] = []

    def start(*channels: str) -> Terminal:
        args = ["run", "--port", sim.port, "--dwell", "1m", "--yes"]
        for spec in channels or ("1:2:250:5",):
            args += ["-c", spec]
        term = Terminal(args, env)
        opened.append(term)
        sim.wait_for(lambda e: e["kind"] == "output_on")
        term.read_until(b"left of 1 min")
        return term

    yield start
    for term in opened:
        term.close()


def setpoint(sim: SimProcess, channel: int, ua: int) -> dict[str, Any]:
    return sim.wait_for(
        lambda e: e["kind"] == "setpoint" and e["channel"] == channel and e["ua"] == ua
    )


def stored_reason(env: dict[str, str]) -> str:
    from estim.journal import Journal

    with Journal(env["ESTIM_DB"]) as journal:
        (row,) = journal.session_rows()
    return str(row["stop_reason"])


def test_the_live_view_shows_countdown_state_and_channels(terminal: Any, sim: SimProcess) -> None:
    term = terminal("1:2:250:5", "2:2:250:4")
    term.read_until(b"RUNNING")
    term.read_until(b"[#")  # the progress bar fills
    for text in (
        b"estim  session ",
        b"estim-sim SIM-0001",
        b"(SIMULATED)",
        b">ch1",
        b"ch2",
        b"2.0 kohm",
        b"space or q: STOP",
    ):
        assert text in term.output
    term.send(b"q")
    assert term.wait() == 3


@pytest.mark.parametrize(
    ("key", "ua"),
    [(b"+", 5100), (b"=", 5100), (b"\x1b[A", 5100), (b"-", 4900), (b"_", 4900), (b"\x1b[B", 4900)],
)
def test_each_amplitude_key(terminal: Any, sim: SimProcess, key: bytes, ua: int) -> None:
    term = terminal()
    term.send(key)
    setpoint(sim, 1, ua)
    term.read_until(f"amplitude to {ua / 1000:g} mA".encode())
    term.send(b" ")
    assert term.wait() == 3


def test_repeated_keys_step_one_unit_step_each(terminal: Any, sim: SimProcess) -> None:
    term = terminal()
    for ua in (5100, 5200, 5300):
        term.send(b"+")
        setpoint(sim, 1, ua)
    term.send(b"\x1b[B")
    setpoint(sim, 1, 5200)
    term.send(b"q")
    assert term.wait() == 3


def test_a_digit_selects_a_channel(terminal: Any, sim: SimProcess) -> None:
    term = terminal("1:2:250:5", "2:2:250:4")
    term.send(b"2")
    term.read_until(b"channel 2 selected")
    term.send(b"+")
    setpoint(sim, 2, 4100)
    term.send(b"7")
    term.read_until(b"channel 7 is not in this session")
    term.send(b"q")
    assert term.wait() == 3


@pytest.mark.parametrize(
    ("key", "reason"),
    [(b" ", "stopped at the keyboard"), (b"q", "stopped at the keyboard"), (b"\x03", "Ctrl-C")],
)
def test_space_q_and_ctrl_c_stop_at_once(
    terminal: Any, sim: SimProcess, env: dict[str, str], key: bytes, reason: str
) -> None:
    term = terminal()
    term.send(key)
    off = sim.wait_for(lambda e: e["kind"] == "output_off")
    assert off["reason"] == "stop"
    assert term.wait() == 3
    assert stored_reason(env) == reason
    # issue 18: the last screen showed a full bar, "0:00 left" and the channel still
    # at its amplitude, as if the dwell had completed
    head, bar, channels, _, message = last_screen(term)
    assert "STOPPED" in head
    assert "left of" not in bar
    assert "delivered of 1 min" in bar
    assert bar.count("#") < 10
    assert "off" in channels
    assert "5.0 mA" not in channels
    assert message.startswith("STOPPED: ")


def last_screen(term: Any) -> list[str]:
    """The five lines the live view drew last (each drawn line starts with ESC [2K)."""
    text = term.output.decode(errors="replace")
    lines = [chunk.split("\n")[0].rstrip("\r") for chunk in text.split("\x1b[2K")[1:]]
    return lines[-5:]


def test_a_closed_terminal_stops_output(
    terminal: Any, sim: SimProcess, env: dict[str, str]
) -> None:
    term = terminal()
    term.hang_up()  # the clinician closed the terminal window: SIGHUP
    off = sim.wait_for(lambda e: e["kind"] == "output_off")
    assert off["reason"] == "stop"
    assert term.wait() == 3
    assert stored_reason(env) == "SIGHUP: the terminal closed"


def test_sigterm_stops_output(terminal: Any, sim: SimProcess, env: dict[str, str]) -> None:
    term = terminal()
    term.proc.send_signal(signal.SIGTERM)
    assert sim.wait_for(lambda e: e["kind"] == "output_off")["reason"] == "stop"
    assert term.wait() == 3
    assert stored_reason(env) == "SIGTERM: the program was asked to end"


def estim_stop(
    port: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "estim", "stop", "--port", port],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


#: login contexts unlike the one the session was started from (issue 18 item 4):
#: what changes in the environment
CONTEXTS = {
    "another XDG_RUNTIME_DIR (ssh, a service)": {"XDG_RUNTIME_DIR": "other-runtime"},
    "no XDG_RUNTIME_DIR, another TMPDIR (sudo)": {"XDG_RUNTIME_DIR": None, "TMPDIR": "other-tmp"},
    "another HOME and ESTIM_HOME": {"HOME": "other-home", "ESTIM_HOME": "other-estim"},
}
# (another user: tests/test_owner.py, as this interpreter cannot be run by another user)


@pytest.mark.parametrize("context", sorted(CONTEXTS))
def test_estim_stop_works_from_another_login_context(
    terminal: Any, sim: SimProcess, env: dict[str, str], tmp_path: Path, context: str
) -> None:
    # issue 18: from a shell whose XDG_RUNTIME_DIR or TMPDIR differed, estim stop
    # said "held by another program, not estim", exit 5, and output stayed on
    term = terminal()
    changes = CONTEXTS[context]
    other = dict(env)
    for key, value in changes.items():
        if value is None:
            other.pop(key, None)
        else:
            (tmp_path / value).mkdir(mode=0o777, exist_ok=True)
            other[key] = str(tmp_path / value)
    done = estim_stop(sim.port, other)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Output stopped: session "), done.stdout
    assert sim.wait_for(lambda e: e["kind"] == "output_off")["reason"] == "stop"
    assert term.wait() == 3


@pytest.mark.parametrize("scheme", ["spy://", "alt://", ""])
def test_a_second_program_cannot_drive_a_unit_by_another_url(
    terminal: Any, sim: SimProcess, env: dict[str, str], tmp_path: Path, scheme: str
) -> None:
    # issue 18: a second process opening the port as spy:///dev/pts/N stopped the
    # first session's output as an orphan and ran its own
    term = terminal()
    url = f"{scheme}{sim.port}" + ("?file=/dev/null" if scheme == "spy://" else "")
    probe = subprocess.run(
        [sys.executable, "-m", "estim", "info", "--port", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode == 5, probe.stderr
    assert "held by" in probe.stderr or "busy" in probe.stderr, probe.stderr
    assert len(probe.stderr.strip().splitlines()) == 1
    assert [e for e in sim.lines[1:] if '"output_off"' in e] == []  # still running
    term.send(b"q")
    assert term.wait() == 3


def spellings(port: str, tmp_path: Path) -> dict[str, tuple[str, Path | None]]:
    """Other names of the same device: (name, working directory)."""
    link = tmp_path / "unit0"
    link.symlink_to(port)
    chain = tmp_path / "by-id" / "usb-estim_unit-if00"
    chain.parent.mkdir()
    chain.symlink_to(link)  # a /dev/serial/by-id/... style link to a link
    head, _, tail = port.rpartition("/")
    return {
        "the same path": (port, None),
        "a symlink": (str(link), None),
        "a relative symlink": ("./unit0", tmp_path),
        "a by-id chain of symlinks": (str(chain), None),
        "a path with a dot segment": (f"{head}/./{tail}", None),
        "a relative path with ..": (os.path.relpath(port, tmp_path), tmp_path),
    }


@pytest.mark.parametrize(
    "spelling",
    [
        "the same path",
        "a symlink",
        "a relative symlink",
        "a by-id chain of symlinks",
        "a path with a dot segment",
        "a relative path with ..",
    ],
)
def test_estim_stop_finds_the_session_by_any_name_of_the_port(
    terminal: Any, sim: SimProcess, env: dict[str, str], tmp_path: Path, spelling: str
) -> None:
    # issue 13: on main, estim stop by another spelling of the port said "held by
    # another program", exit 5, and the unit kept stimulating
    term = terminal()
    name, cwd = spellings(sim.port, tmp_path)[spelling]
    other_home = {**env, "ESTIM_HOME": str(tmp_path / "another-home")}  # any ESTIM_HOME
    done = estim_stop(name, other_home, cwd)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Output stopped: session "), done.stdout
    assert sim.wait_for(lambda e: e["kind"] == "output_off")["reason"] == "stop"
    assert term.wait() == 3
    assert stored_reason(env) == "stopped with estim stop"


def test_estim_stop_finds_a_session_started_from_the_library(
    sim: SimProcess, env: dict[str, str], tmp_path: Path
) -> None:
    app = tmp_path / "charting_app.py"
    app.write_text(
        "import sys, estim\n"
        "plan = estim.SessionPlan(dwell=60, channels=[estim.ChannelPlan(channel=1, "
        "frequency_hz=2, pulse_width_us=250, amplitude_ma=5)])\n"
        "record = estim.run_session(sys.argv[1], plan, journal=estim.Journal(sys.argv[2]))\n"
        "print(record.outcome, record.stop_reason)\n"
    )
    library = subprocess.Popen(
        [sys.executable, str(app), sim.port, str(tmp_path / "app.db")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sim.wait_for(lambda e: e["kind"] == "output_on")
        done = estim_stop(spellings(sim.port, tmp_path)["a symlink"][0], env)
        out, err = library.communicate(timeout=30)
    finally:
        if library.poll() is None:
            library.kill()
            library.communicate()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Output stopped: session "), done.stdout
    assert sim.wait_for(lambda e: e["kind"] == "output_off")["reason"] == "stop"
    assert out.strip() == "stopped stopped with estim stop", err


def test_estim_stop_reaches_the_unit_directly_when_no_estim_holds_it(
    sim: SimProcess, env: dict[str, str]
) -> None:
    done = estim_stop(sim.port, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"No output was on estim-sim SIM-0001 ({sim.port}); no estim process held it. "
        "STOP sent anyway.\n"
    )


def test_keys_never_pass_the_clinic_limit(
    sim: SimProcess, env: dict[str, str], tmp_path: Path
) -> None:
    # issue 10: with amplitude_max_ma = 6 and a 5 mA plan, forty presses of the up
    # key set 9 mA on main; the live view only checked the unit's maximum
    config = tmp_path / "config.toml"
    config.write_text("[limits]\namplitude_max_ma = 6\n")
    env = {**env, "ESTIM_CONFIG": str(config)}
    term = Terminal(["run", "--port", sim.port, "--dwell", "1m", "--yes", "-c", "1:2:250:5"], env)
    try:
        sim.wait_for(lambda e: e["kind"] == "output_on")
        term.read_until(b"(set 5 of 6)")  # the view shows the top of the range
        for _ in range(40):
            term.send(b"+")
        setpoint(sim, 1, 6000)
        term.read_until(b"above the clinic's maximum 6 mA")
        term.send(b"q")
        assert term.wait() == 3
    finally:
        term.close()
    setpoints = [e["ua"] for e in map(json.loads, sim.lines[1:]) if e["kind"] == "setpoint"]
    assert max(setpoints) == 6000
    from estim.journal import Journal

    with Journal(env["ESTIM_DB"]) as journal:
        (record,) = journal.query()
    kinds = [e.kind for e in record.events]
    assert kinds.count("amplitude_set") == 10
    assert kinds.count("amplitude_refused") == 30
