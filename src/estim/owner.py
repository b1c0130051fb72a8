"""Who holds a unit, so that ``estim stop`` reaches the session running on it
whatever name the port was opened by, from any terminal, any login and any user
with rights to the device; and so that no second estim can drive it meanwhile.

A serial port has one owner at a time. Each connected device (threaded or asyncio,
from the CLI, a charting app or the clinic service) claims the port's *identity*
before it sends a byte: for a local device path (also behind ``spy://`` and
``alt://``), the device itself (its device number, after resolving symlinks such
as ``/dev/serial/by-id/...``, relative paths and ``.`` segments); for
``socket://`` and ``rfc2217://``, the host and port. The claim is a Unix socket
named after that identity in a place that depends on no environment variable and
no user: Linux's abstract socket namespace (``@estim-owner-<hash>``; the kernel
drops it when the process dies, even on ``kill -9``), elsewhere
``/tmp/estim-owners/<hash>.sock``. A second claim of the same identity, from
this process or another, is refused (``PortBusy``, naming the holder's pid).

``request_stop`` connects there and asks the owner to stop its output; the owner
answers with one line saying what it stopped. Anyone who can reach the socket may
ask: stopping output is the safe direction, as a unit's own stop button is (a
local user could as well pull the cable). Nothing else is asked or answered on it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import socket
import stat
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from estim.errors import PortBusy

log = logging.getLogger("estim.owner")

#: how long ``request_stop`` waits for the owner's answer (its STOP is acknowledged by then)
ANSWER_S = 5.0


def port_identity(url: str) -> str | None:
    """The unit behind ``url``, the same for every spelling of it; None for ports
    that only this process can reach (``sim://``, ``loop://``)."""
    url = url.strip()
    if "://" in url:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("socket", "rfc2217") and parts.hostname:
            host = parts.hostname.lower()
            if host in ("localhost", "::1"):
                host = "127.0.0.1"
            return f"{scheme}://{host}:{parts.port}"
        if scheme in ("spy", "alt") and (parts.netloc + parts.path):
            return port_identity(parts.netloc + parts.path)  # a local device, observed
        return None
    path = os.path.realpath(url)
    try:
        info = os.stat(path)
    except OSError:
        return f"path:{path}"
    if stat.S_ISCHR(info.st_mode):
        return f"dev:{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
    return f"path:{path}"


#: where owners listen when there is no abstract namespace (not Linux): one fixed
#: place for every user, sticky like /tmp itself
SHARED_DIR = Path("/tmp/estim-owners")

ABSTRACT = sys.platform.startswith("linux")


def _address(identity: str) -> str:
    digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
    if ABSTRACT:
        return f"\0estim-owner-{digest}"
    SHARED_DIR.mkdir(mode=0o1777, exist_ok=True)
    info = SHARED_DIR.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (0, os.getuid()):
        raise PermissionError(f"{SHARED_DIR} is not estim's; remove it and try again")
    return str(SHARED_DIR / f"{digest}.sock")


def _peer_pid(conn: socket.socket) -> int | None:
    """The process at the other end of a Unix socket (Linux), or None."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    pid, _, _ = struct.unpack("3i", creds)
    return int(pid)


class Owner:
    """Holds a port's identity while open: answers stop requests by calling
    ``on_stop()`` (which returns the one line to answer) on its own thread."""

    def __init__(self, identity: str, on_stop: Callable[[], str]) -> None:
        self.identity = identity
        self._on_stop = on_stop
        self._address = _address(identity)
        self._server = self._bind()
        self._closing = False
        self._thread = threading.Thread(
            target=self._serve, name=f"estim-owner {identity}", daemon=True
        )
        self._thread.start()

    def _bind(self) -> socket.socket:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                server.bind(self._address)
            except OSError as err:
                holder = _holder(self._address)
                if holder is not None or err.errno != errno.EADDRINUSE or ABSTRACT:
                    raise _busy(self.identity, holder) from None
                Path(self._address).unlink(missing_ok=True)  # left by a process that died
                server.bind(self._address)
            if not ABSTRACT:
                os.chmod(self._address, 0o666)  # any user may ask for a stop
            server.listen(8)
        except BaseException:
            server.close()
            raise
        return server

    def _serve(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    conn.settimeout(ANSWER_S)
                    if conn.recv(64).strip() != b"stop":
                        continue
                    try:
                        answer = self._on_stop()
                    except Exception as err:  # the answer must say so, in one line
                        answer = f"the stop failed: {err}"
                    conn.sendall(answer.replace("\n", " ").encode() + b"\n")
                except OSError:
                    continue

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        if not ABSTRACT:
            with contextlib.suppress(OSError):
                if _holder(self._address) is None:
                    Path(self._address).unlink()


def _busy(identity: str, holder: int | None) -> PortBusy:
    who = f"estim process {holder}" if holder else "another estim process"
    return PortBusy(
        f"the unit ({identity}) is held by {who}: stop or close it there first "
        "(estim stop --port ... stops its output from here)"
    )


def hold(identity: str | None, on_stop: Callable[[], str]) -> Owner | None:
    """Claim ``identity`` for this device (None, or a system without Unix sockets:
    nothing to claim). Raises ``PortBusy`` if a live estim holds it, in this
    process or another; any other failure to register is logged, not raised."""
    if identity is None or not hasattr(socket, "AF_UNIX"):
        return None
    try:
        return Owner(identity, on_stop)
    except PortBusy:
        raise
    except OSError as err:
        log.warning("cannot register as the owner of %s: %s", identity, err)
        return None


def request_stop(identity: str | None) -> str | None:
    """Ask the process holding ``identity`` to stop its output; its one-line answer,
    or None if no live process holds it."""
    if identity is None or not hasattr(socket, "AF_UNIX"):
        return None
    address = _address(identity)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(ANSWER_S)
        try:
            client.connect(address)
            client.sendall(b"stop\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = client.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except OSError:
            return None
    return answer.decode(errors="replace").strip() or None


def _holder(address: str) -> int | None:
    """The pid of the live process listening at ``address`` (0 if it cannot be
    told), or None if none listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(address)
        except OSError:
            return None
        return _peer_pid(probe) or 0
