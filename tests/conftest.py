"""Shared fixtures. The autouse leak check fails any test that leaves a thread or
an open file descriptor (a port, a pty, a socket, a database) behind."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from .cbuild import cunit

pytest_plugins = ["pytester"]
__all__ = ["cunit"]  # the C reference unit, built once per session


def _open_fds() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:
            continue  # the fd of the listdir itself, closed by now
        fds.add(fd)
    return fds


def _describe(fd: int) -> str:
    try:
        return f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return str(fd)


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()
    yield
    leaked = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    for thread in leaked:
        thread.join(timeout=2.0)  # a thread on its way out gets to finish
    leaked = [t for t in leaked if t.is_alive()]
    fds_leaked = sorted(_open_fds() - fds_before)
    problems = []
    if leaked:
        problems.append("threads left running: " + ", ".join(t.name for t in leaked))
    if fds_leaked:
        problems.append(
            "file descriptors left open: " + ", ".join(_describe(fd) for fd in fds_leaked)
        )
    if problems:
        pytest.fail(f"{request.node.nodeid} leaked: " + "; ".join(problems), pytrace=False)


#: pictures a test made for a person to look at (the console mid-session): their
#: paths are printed at the end of the run, so CI's log says where they are
PICTURES = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for path in terminalreporter.config.stash.get(PICTURES, []):
        terminalreporter.write_line(f"picture for a reviewer: {path}")
