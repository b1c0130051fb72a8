"""A port's identity is the same for every spelling of it, and the owner's control
channel answers a stop request (issue 13)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from estim.errors import PortBusy
from estim.owner import hold, port_identity, request_stop


@pytest.fixture
def pty_path() -> Iterator[str]:
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def test_every_name_of_a_device_is_one_identity(
    pty_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = tmp_path / "unit0"
    link.symlink_to(pty_path)
    head, _, tail = pty_path.rpartition("/")
    monkeypatch.chdir(tmp_path)
    names = [pty_path, str(link), "./unit0", f"{head}/./{tail}", os.path.relpath(pty_path)]
    identities = {port_identity(name) for name in names}
    assert len(identities) == 1
    (identity,) = identities
    assert identity is not None
    assert identity.startswith("dev:")


def test_url_identities() -> None:
    assert port_identity("socket://localhost:7000") == port_identity("socket://127.0.0.1:7000")
    assert port_identity("socket://127.0.0.1:7000") != port_identity("socket://127.0.0.1:7001")
    assert port_identity("sim://") is None  # reachable from this process only
    assert port_identity("sim://unit1?drop=0.1") is None


def test_an_owner_answers_a_stop_and_a_dead_one_is_replaced() -> None:
    identity = f"test:{os.getpid()}:owner"
    asked: list[str] = []

    def on_stop() -> str:
        asked.append("stop")
        return "session 12345678 on the test port"

    assert request_stop(identity) is None
    owner = hold(identity, on_stop)
    assert owner is not None
    try:
        assert request_stop(identity) == "session 12345678 on the test port"
        assert asked == ["stop"]
    finally:
        owner.close()
    assert request_stop(identity) is None
    again = hold(identity, lambda: "the new owner")  # (its socket file was removed or stale)
    assert again is not None
    try:
        assert request_stop(identity) == "the new owner"
    finally:
        again.close()


def test_spy_and_alt_urls_name_the_device_they_observe(pty_path: str) -> None:
    device = port_identity(pty_path)
    assert port_identity(f"spy://{pty_path}?file=/dev/null") == device
    assert port_identity(f"alt://{pty_path}?class=PosixPollSerial") == device


def test_a_unit_held_by_an_estim_cannot_be_claimed_again(pty_path: str) -> None:
    identity = port_identity(pty_path)
    owner = hold(identity, lambda: "stopped")
    assert owner is not None
    try:
        with pytest.raises(PortBusy, match=f"held by estim process {os.getpid()}"):
            hold(identity, lambda: "a second owner")
        with pytest.raises(PortBusy):
            hold(port_identity(f"spy://{pty_path}"), lambda: "by another URL")
    finally:
        owner.close()
    again = hold(identity, lambda: "free again once closed")
    assert again is not None
    again.close()


def run_as(uid: int, identity: str) -> str | None:
    """``request_stop(identity)`` from a forked child that has become ``uid``, with
    none of this process's environment variables."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgid(uid)
            os.setuid(uid)
            os.environ.clear()
            answer = request_stop(identity)
            os.write(write, (answer or "<none>").encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(child, 0)
    return None if text == "<none>" else text


#: users to ask from: this one, and when the tests run as root, nobody (65534)
USERS = [os.getuid(), *([65534] if os.getuid() == 0 else [])]


@pytest.mark.parametrize("uid", USERS)
def test_a_stop_reaches_the_owner_from_any_user_and_environment(uid: int) -> None:
    # issue 18 item 4: the owner's socket was in the user's $XDG_RUNTIME_DIR, so a
    # stop from sudo, ssh or a service never found it
    identity = f"test:{os.getpid()}:any-user"
    owner = hold(identity, lambda: "session 1234abcd stopped")
    assert owner is not None
    try:
        assert run_as(uid, identity) == "session 1234abcd stopped"
    finally:
        owner.close()
