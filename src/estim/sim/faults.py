"""The simulated unit's fault script: faults a test injects now (a pulled electrode,
an over-current, a button, a reset) or at a time (``inject_at``) or an offset into
every session (``inject_in_session``), named as the ``sim://`` options name them.
"""

from __future__ import annotations

from typing import ClassVar

from estim.protocol import (
    BootCause,
    Button,
    ButtonPressed,
    Fault,
)

from .model import (
    _US,
    OPEN_CIRCUIT_OHM,
    _changes,
)
from .unit_base import UnitBase


class FaultScript(UnitBase):
    """Faults injected now, at a clock time, or into every session."""

    #: each action a script may name, and how many arguments it takes
    _ACTIONS: ClassVar[dict[str, int]] = {
        "lead_off": 1,
        "impedance": 2,
        "over_current": 1,
        "estop": 0,
        "mark": 0,
        "reset": 0,
        "internal": 0,
    }

    @_changes
    def set_impedance(self, channel: int, ohm: int) -> None:
        """Change an electrode's impedance now; above lead_off_ohm is a lead-off."""
        self._inject("impedance", (channel, ohm))

    def pull_electrode(self, channel: int) -> None:
        self.set_impedance(channel, OPEN_CIRCUIT_OHM)

    @_changes
    def over_current(self, channel: int) -> None:
        self._inject("over_current", (channel,))

    @_changes
    def press(self, button: Button) -> None:
        """A button on the unit. ESTOP stops output and latches a fault."""
        self._inject("mark" if button == Button.MARK else "estop", ())

    @_changes
    def internal_fault(self) -> None:
        self._inject("internal", ())

    @_changes
    def reset(self, cause: BootCause = BootCause.RESET) -> None:
        """Power cycle: output off, everything forgotten, idle, BOOTED."""
        self._inject("reset", (int(cause),))

    @_changes
    def inject_at(self, at: float, action: str, *args: int) -> None:
        """Script an action at clock time ``at`` (seconds)."""
        self._check_action(action, args)
        self._scheduled.append((round(at * _US), action, args))
        self._scheduled.sort(key=lambda a: a[0])

    @_changes
    def inject_in_session(self, offset: float, action: str, *args: int) -> None:
        """Script an action ``offset`` seconds after output starts, in every session."""
        self._check_action(action, args)
        self._per_session.append((round(offset * _US), action, args))

    def _check_action(self, action: str, args: tuple[int, ...]) -> None:
        if action not in self._ACTIONS:
            raise ValueError(f"unknown action {action!r}; known: {', '.join(self._ACTIONS)}")
        if action == "reset":
            return
        if len(args) != self._ACTIONS[action]:
            raise ValueError(f"action {action!r} takes {self._ACTIONS[action]} argument(s)")
        if args:
            self._check_channel(args[0])

    def _inject(self, action: str, args: tuple[int, ...]) -> None:
        self._check_action(action, args)
        now = self._now()
        self._advance(now)
        self._act(action, args, now)
        self._advance(now)
        self._flush_events()
        self._log_levels(now)

    def _act(self, action: str, args: tuple[int, ...], t: int) -> None:
        if action in ("lead_off", "impedance"):
            channel = args[0]
            ohm = OPEN_CIRCUIT_OHM if action == "lead_off" else args[1]
            self.impedance_ohm[channel - 1] = ohm
            self._log(t, "impedance", channel=channel, ohm=ohm)
            self._check_electrodes(t)
        elif action == "over_current":
            self._fault(Fault.OVER_CURRENT, args[0], t)
        elif action in ("estop", "mark"):
            button = Button.ESTOP if action == "estop" else Button.MARK
            self._log(t, "button", button=button.name)
            self._emit(ButtonPressed, t, button=int(button))
            if button == Button.ESTOP:
                self._fault(Fault.ESTOP, 0, t)
        elif action == "internal":
            self._fault(Fault.INTERNAL, 0, t)
        elif action == "reset":
            if self._session is not None:
                self._end_session(t, "reset")
            self._outbox.clear()
            self._pending.clear()
            self._boot(BootCause(args[0]) if args else BootCause.RESET, t)

    def _run_action(self, queue: list[tuple[int, str, tuple[int, ...]]], t: int) -> None:
        _, action, args = queue.pop(0)
        self._log(t, "injected", action=action, args=list(args))
        self._act(action, args, t)

    def _check_channel(self, channel: int) -> None:
        if not 1 <= channel <= self.config.channels:
            raise ValueError(f"channel {channel} does not exist (1..{self.config.channels})")
