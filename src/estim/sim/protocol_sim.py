"""pyserial URL handler for ``sim://``: a simulated estim unit as a serial port.

    sim://                       a fresh unit with default options (real clock)
    sim://?channels=4&seed=1     a fresh unit with options (see estim.sim.options)
    sim://NAME?drop=0.01         a unit served in this process by estim.sim.serve()

pyserial finds this module through ``serial.protocol_handler_packages``, to which
``import estim.sim`` adds ``estim.sim``. Timeouts are in the unit's clock time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import serial
from serial.serialutil import PortNotOpenError, SerialBase

from estim.clock import Clock

from .registry import open_url
from .transport import Connection, PoweredUnit
from .unit import SimulatedUnit

if TYPE_CHECKING:
    from typing_extensions import Buffer


class Serial(SerialBase):
    """A serial port whose other end is a simulated unit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._conn: Connection | None = None
        self._owned: PoweredUnit | None = None
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        url = self.port
        if url is None:
            raise serial.SerialException("Port must be configured before it can be used.")
        if self.is_open:
            raise serial.SerialException("Port is already open.")
        self._conn, self._owned = open_url(url)
        self.is_open = True

    def close(self) -> None:
        conn, owned = self._conn, self._owned
        self._conn = self._owned = None
        self.is_open = False
        if conn is not None:
            conn.close()
        if owned is not None:
            owned.power_off()

    def _reconfigure_port(self, *args: Any, **kwargs: Any) -> None:
        """Baud rate and framing do not matter to the simulator (pacing is an option)."""

    def _update_dtr_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_break_state(self) -> None:
        pass

    def _connection(self) -> Connection:
        if not self.is_open or self._conn is None:
            raise PortNotOpenError()
        return self._conn

    def read(self, size: int = 1) -> bytes:
        return self._connection().read(size, self.timeout)

    def write(self, b: Buffer, /) -> int | None:
        return self._connection().write(bytes(b))

    @property
    def in_waiting(self) -> int:
        return self._connection().in_waiting()

    def reset_input_buffer(self) -> None:
        self._connection().reset_input()

    def reset_output_buffer(self) -> None:
        self._connection()

    def flush(self) -> None:
        self._connection()

    def cancel_read(self) -> None:
        if self._conn is not None:
            self._conn.cancel_read()

    def cancel_write(self) -> None:
        pass

    # -- what a test or the driver may want to know ------------------------------

    @property
    def estim_clock(self) -> Clock:
        """The unit's clock: a host on this port must wait on it too (``estim.ports.port_clock``)."""
        return self._connection().clock

    @property
    def sim_unit(self) -> SimulatedUnit:
        return self._connection().powered.unit

    @property
    def sim_connection(self) -> Connection:
        return self._connection()
