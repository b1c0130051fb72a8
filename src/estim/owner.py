"""Who holds a unit, so that ``estim stop`` reaches the session running on it
whatever name the port was opened by, from any terminal and any ``ESTIM_HOME``.

A serial port has one owner at a time. Each connected device (threaded or asyncio,
from the CLI or a charting app) registers the port's *identity*: for a local device
path, the device itself (its device number, after resolving symlinks such as
``/dev/serial/by-id/...``, relative paths and ``.`` segments); for ``socket://`` and
``rfc2217://``, the host and port. It listens on a Unix socket named after that
identity in the user's runtime directory (``$XDG_RUNTIME_DIR/estim``, else
``/tmp/estim-<uid>``, mode 0700: never under ``ESTIM_HOME``). ``request_stop``
connects there and asks the owner to stop its output; the owner answers with one
line saying what it stopped. A socket left by a process that died is found dead
and replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

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
        return None
    path = os.path.realpath(url)
    try:
        info = os.stat(path)
    except OSError:
        return f"path:{path}"
    if stat.S_ISCHR(info.st_mode):
        return f"dev:{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
    return f"path:{path}"


def runtime_dir() -> Path:
    """The user's private directory for live estim processes (created 0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir():
        path = Path(base) / "estim"
    else:
        path = Path(tempfile.gettempdir()) / f"estim-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise PermissionError(f"{path} is not private to this user; remove it and try again")
    return path


def _socket_path(identity: str) -> Path:
    digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
    return runtime_dir() / f"{digest}.sock"


class Owner:
    """Holds a port's identity while open: answers stop requests by calling
    ``on_stop()`` (which returns the one line to answer) on its own thread."""

    def __init__(self, identity: str, on_stop: Callable[[], str]) -> None:
        self.identity = identity
        self._on_stop = on_stop
        self._path = _socket_path(identity)
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
                server.bind(str(self._path))
            except OSError:
                if _answers(self._path):
                    raise  # another live process holds the same unit
                self._path.unlink(missing_ok=True)  # left by a process that died
                server.bind(str(self._path))
            os.chmod(self._path, 0o600)
            server.listen(4)
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
        with contextlib.suppress(OSError):
            if self._path.exists() and not _answers(self._path):
                self._path.unlink()


def hold(identity: str | None, on_stop: Callable[[], str]) -> Owner | None:
    """Register as the owner of ``identity`` (None, or a system without Unix
    sockets: nothing to register). Never fails a connection: it logs instead."""
    if identity is None or not hasattr(socket, "AF_UNIX"):
        return None
    try:
        return Owner(identity, on_stop)
    except OSError as err:
        log.warning("cannot register as the owner of %s: %s", identity, err)
        return None


def request_stop(identity: str | None) -> str | None:
    """Ask the process holding ``identity`` to stop its output; its one-line answer,
    or None if no live process holds it."""
    if identity is None or not hasattr(socket, "AF_UNIX"):
        return None
    path = _socket_path(identity)
    if not path.exists():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(ANSWER_S)
        try:
            client.connect(str(path))
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


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
