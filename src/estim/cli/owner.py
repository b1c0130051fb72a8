"""Which estim process holds which port, so ``estim stop`` can reach a session
running in another terminal (a serial port has one owner at a time).

A running ``estim run`` keeps ``<app dir>/run/<port>.pid`` locked; the lock is
what proves the process is alive (the OS drops it when the process dies), so a
stale file left by a crash is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from estim.paths import app_dir


def _path(port: str) -> Path:
    digest = hashlib.sha1(port.encode()).hexdigest()[:16]
    return app_dir() / "run" / f"{digest}.pid"


@contextlib.contextmanager
def own(port: str) -> Iterator[None]:
    """Mark this process as the owner of ``port`` while inside."""
    path = _path(port)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        os.close(fd)
        yield  # another estim owns it; connecting will say the port is busy
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def owner_of(port: str) -> int | None:
    """The pid of the live estim process that owns ``port``, if any."""
    path = _path(port)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = path.read_text().strip()
            return int(text) if text.isdigit() else None
        return None  # nobody holds it: a stale file
    finally:
        os.close(fd)
