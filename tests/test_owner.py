"""A port's identity is the same for every spelling of it, and the owner's control
channel answers a stop request (issue 13)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
