"""The live view of ``estim run`` on a terminal: countdown, state, channels, keys.

Keys: up/down or +/- change the selected channel's amplitude by one of the unit's
steps; a digit selects a channel; space, q or Ctrl-C stop at once. The view
redraws a few lines in place ten times a second. If the terminal goes away
(SIGHUP) drawing stops, and the session still ends with output off.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import shutil
import sys
import termios
import tty
from typing import TYPE_CHECKING, TextIO

from estim.cli.events import EventQueue, describe
from estim.durations import format_duration
from estim.errors import DeviceFault, EstimError
from estim.protocol import StopReason

if TYPE_CHECKING:
    from estim.session import Session

UP = (b"\x1b[A", b"\x1bOA", b"+", b"=")
DOWN = (b"\x1b[B", b"\x1bOB", b"-", b"_")
STOP_KEYS = (b" ", b"q", b"Q", b"\x03")
KEYS_HELP = "keys: up/down or +/- amplitude   {channels} select channel   space or q: STOP"


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.999))
    return f"{seconds // 60}:{seconds % 60:02d}"


class LiveView:
    def __init__(
        self,
        session: Session,
        events: EventQueue,
        *,
        stdin: TextIO = sys.stdin,
        stdout: TextIO = sys.stdout,
    ) -> None:
        self.session = session
        self.events = events
        self.stdin = stdin
        self.stdout = stdout
        self.describe = describe
        self.channels = [c.channel for c in session.plan.channels]
        self.channel_keys = "/".join(map(str, self.channels))
        #: the top of each channel's range: the unit's, the clinic's and SAFETY.md's
        self.maxima = {
            c.channel: session.device.limits.amplitude_max_ma(c) for c in session.plan.channels
        }
        self.selected = self.channels[0]
        self.setpoints = {c.channel: c.amplitude_ma for c in session.plan.channels}
        self.step_ua = round(session.device.info.amplitude_step_ma * 1000)
        self.message = "starting"
        self.drawn = 0
        self.terminal_gone = False

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        fd = self.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)  # keys one at a time; Ctrl-C still raises SIGINT
        try:
            self._write("\x1b[?25l")
            pending = b""
            while not self.session.state.is_end:
                self._drain()
                self._draw()
                try:
                    ready, _, _ = select.select([fd], [], [], 0.1)
                except InterruptedError:
                    continue
                if ready:
                    try:
                        chunk = os.read(fd, 64)
                    except OSError:
                        chunk = b""
                    if not chunk:  # the terminal is gone
                        self.terminal_gone = True
                        self.session.request_stop(StopReason.HOST_SHUTDOWN, "the terminal closed")
                        continue
                    pending = self._keys(pending + chunk)
                    self._draw()  # show what the key did before the next event replaces it
            self._drain()
            self._draw()
        finally:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            self._write("\x1b[?25h\n")

    # -- keys ----------------------------------------------------------------------------

    def _keys(self, data: bytes) -> bytes:
        """Act on each complete key in ``data``; return an incomplete escape sequence."""
        while data:
            if data[:1] == b"\x1b" and len(data) < 3:
                return data
            for keys, action in ((STOP_KEYS, self._stop), (UP, self._up), (DOWN, self._down)):
                key = next((k for k in keys if data.startswith(k)), None)
                if key is not None:
                    action()
                    data = data[len(key) :]
                    break
            else:
                if data[:1].isdigit():
                    self._select(int(data[:1]))
                data = data[3:] if data[:1] == b"\x1b" else data[1:]
        return b""

    def _stop(self) -> None:
        self.message = "STOPPING"
        self._draw()
        try:
            self.session.stop(StopReason.OPERATOR, "stopped at the keyboard")
        except DeviceFault as err:  # it did not stop: the session ends as that fault
            self.message = f"UNIT FAULT: {err}"
            self._draw()

    def _select(self, channel: int) -> None:
        if channel in self.channels:
            self.selected = channel
            self.message = f"channel {channel} selected"
        else:
            self.message = (
                f"channel {channel} is not in this session ({', '.join(map(str, self.channels))})"
            )

    def _up(self) -> None:
        self._change(+1)

    def _down(self) -> None:
        self._change(-1)

    def _change(self, steps: int) -> None:
        channel = self.selected
        ua = round(self.setpoints[channel] * 1000) + steps * self.step_ua
        target = max(0, ua) / 1000
        try:
            self.session.set_amplitude(channel, target)
        except EstimError as err:
            self.message = str(err)
            return
        self.setpoints[channel] = target
        self.message = f"channel {channel}: amplitude to {target:g} mA"

    # -- drawing -------------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            text = self.describe(event, self.session.id)
            if text:
                self.message = text

    def lines(self) -> list[str]:
        session = self.session
        width = max(40, min(100, shutil.get_terminal_size((80, 24)).columns))
        unit = session.device.info
        head = f"estim  session {session.id}  {str(session.state).upper():<12}  {unit.model} {unit.serial_number}"
        if unit.simulated:
            head += "  (SIMULATED)"
        dwell = session.plan.dwell
        bar_width = max(10, width - 30)
        ended = session.state.is_end
        if ended:  # the last screen says what happened, not what the timer would have said
            record = session.record()
            delivered = record.delivered_s
            done = 0.0 if delivered is None else min(1.0, delivered / dwell)
            told = (
                "delivered: unknown"
                if delivered is None
                else f"{format_duration(round(delivered, 1))} delivered"
            )
            tail = f"{told} of {format_duration(dwell)}"
            self.message = f"{str(record.outcome).upper()}: {record.stop_reason}"
        else:
            left = session.remaining
            done = 1.0 - left / dwell if dwell else 1.0
            tail = f"{_clock(left)} left of {format_duration(dwell)}"
        filled = round(done * bar_width)
        bar = f"[{'#' * filled}{'.' * (bar_width - filled)}] {tail}"
        status = session.last_status
        parts = []
        for ch in self.channels:
            now_ma = None
            impedance = None
            if ended:
                mark = ">" if ch == self.selected else " "
                parts.append(f"{mark}ch{ch}  off (was set {self.setpoints[ch]:g} mA)")
                continue
            if status is not None and ch <= len(status.channels):
                now_ma = status.channels[ch - 1].amplitude_ma
                impedance = status.channels[ch - 1].impedance_ohm
            mark = ">" if ch == self.selected else " "
            shown = "  -  " if now_ma is None else f"{now_ma:5.1f}"
            imp = "" if impedance is None else f"  {impedance / 1000:.1f} kohm"
            parts.append(
                f"{mark}ch{ch} {shown} mA (set {self.setpoints[ch]:g} of {self.maxima[ch]:g}){imp}"
            )
        keys = (
            "the session has ended; output is off"
            if ended
            else KEYS_HELP.format(channels=self.channel_keys)
        )
        return [
            head[:width],
            bar[:width],
            "   ".join(parts)[:width],
            keys[:width],
            self.message[:width],
        ]

    def _draw(self) -> None:
        if self.terminal_gone:
            return
        lines = self.lines()
        out = (f"\x1b[{self.drawn}F" if self.drawn else "") + "".join(
            f"\x1b[2K{line}\n" for line in lines
        )
        self.drawn = len(lines)
        self._write(out)

    def _write(self, text: str) -> None:
        if self.terminal_gone:
            return
        try:
            self.stdout.write(text)
            self.stdout.flush()
        except (OSError, ValueError):
            self.terminal_gone = True
