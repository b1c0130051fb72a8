"""kill -9 of the clinic service (SAFETY.md 10): every unit turns its output off by its
own watchdog, and the next start of the service records the interrupted sessions. The
units are simulators in processes of their own (``estim simulate --tcp --json``), the
service is ``estim serve`` as a clinic runs it, with rooms from the config file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .procs import SimProcess
from .serve_parts import EventStream, plan

WATCHDOG_S = 0.5
#: the unit's watchdog, plus its own check interval and a frame's time, as measured
#: for the CLI (bench/watchdog.py: 495 ms worst of 10)
WATCHDOG_LIMIT_S = WATCHDOG_S + 0.05


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServeProcess:
    def __init__(self, home: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESTIM_")}
        env.update(ESTIM_HOME=str(home), ESTIM_CONFIG=str(home / "config.toml"))
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "estim",
                "serve",
                "--bind",
                f"127.0.0.1:{port}",
                "--db",
                str(home / "estim.db"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdout is not None
        self.first = self.proc.stdout.readline().decode()  # printed before it listens
        assert self.first.startswith("estim serve: 3 room(s)"), self.first + self._err()
        self.lines = [self.proc.stdout.readline().decode() for _ in range(3)]

    def _err(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()

    def up(self, timeout: float = 20.0) -> None:
        """Once it answers (connection refused until uvicorn listens)."""
        end = time.monotonic() + timeout
        while True:
            try:
                httpx.get(f"{self.base}/api/v1", timeout=2.0)
                return
            except httpx.TransportError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise AssertionError(f"estim serve did not come up: {self._err()}") from None
                time.sleep(0.05)  # waiting for a process to listen: nothing to wait on

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def units() -> Iterator[list[SimProcess]]:
    procs = [SimProcess("--tcp", "127.0.0.1:0", "--json", f"serial=KILL-{i}") for i in (1, 2, 3)]
    try:
        yield procs
    finally:
        for p in procs:
            p.__exit__()


def test_kill_9_of_the_service_leaves_every_unit_off_and_the_next_start_records_it(
    tmp_path: Path, units: list[SimProcess]
) -> None:
    rooms = "".join(
        f'[rooms.room-{i}]\nname = "Room {i}"\nport = "{unit.port}"\n\n'
        for i, unit in enumerate(units, 1)
    )
    (tmp_path / "config.toml").write_text(rooms)
    port = free_port()
    service = ServeProcess(tmp_path, port)
    try:
        service.up()
        with EventStream(service.base, None, {}) as stream:
            stream.wait_rooms(lambda r: all(room["link"] == "connected" for room in r.values()))
        ids = []
        with httpx.Client(base_url=f"{service.base}/api/v1", timeout=10) as http:
            for i in (1, 2, 3):
                answer = http.post(f"/rooms/room-{i}/sessions", json=plan())
                assert answer.status_code == 201, answer.text
                ids.append(answer.json()["session_id"])
        for unit in units:
            unit.wait_for(lambda e: e["kind"] == "output_on")
        killed = time.monotonic()
        service.proc.send_signal(signal.SIGKILL)
        service.proc.wait(timeout=10)
        offs = [unit.wait_for(lambda e: e["kind"] == "output_off", timeout=5) for unit in units]
    finally:
        service.close()
    after = [off["t"] - killed for off in offs]
    print(f"kill -9 of estim serve: each unit's output off after {[round(a, 3) for a in after]} s")
    assert [off["reason"] for off in offs] == ["fault:WATCHDOG"] * 3
    assert all(0 < a <= WATCHDOG_LIMIT_S for a in after), after

    again = ServeProcess(tmp_path, port)
    try:
        again.up()
        assert again.proc.stdout is not None
        said = again.proc.stdout.readline().decode()
        assert said.startswith("recorded as interrupted (the service had stopped unexpectedly)")
        assert sorted(said.split(": ", 1)[1].strip().split(", ")) == sorted(ids)
        with httpx.Client(base_url=f"{again.base}/api/v1", timeout=10) as http:
            found = http.get("/sessions", params={"outcome": "interrupted"}).json()
            assert sorted(r["id"] for r in found) == sorted(ids)
            for record in found:
                assert "the host stopped unexpectedly" in record["stop_reason"]
            started = [a for a in http.get("/actions").json() if a["action"] == "service_started"]
            assert sorted(started[0]["detail"]["interrupted"]) == sorted(ids)
            with EventStream(again.base, None, {}) as stream:  # and the units say why
                rooms = stream.wait_rooms(
                    lambda r: all(room["faults"] == ["WATCHDOG"] for room in r.values())
                )
            assert {room["unit_state"] for room in rooms.values()} == {"FAULT"}
        again.proc.send_signal(signal.SIGTERM)
        assert again.proc.wait(timeout=15) == 0
    finally:
        again.close()


def test_sigterm_stops_every_session_and_records_why(
    tmp_path: Path, units: list[SimProcess]
) -> None:
    rooms = "".join(
        f'[rooms.room-{i}]\nport = "{unit.port}"\n\n' for i, unit in enumerate(units, 1)
    )
    (tmp_path / "config.toml").write_text(rooms)
    service = ServeProcess(tmp_path, free_port())
    try:
        service.up()
        with EventStream(service.base, None, {}) as stream:
            stream.wait_rooms(lambda r: all(room["link"] == "connected" for room in r.values()))
        with httpx.Client(base_url=f"{service.base}/api/v1", timeout=10) as http:
            ids = [
                http.post(f"/rooms/room-{i}/sessions", json=plan()).json()["session_id"]
                for i in (1, 2, 3)
            ]
        for unit in units:
            unit.wait_for(lambda e: e["kind"] == "output_on")
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(timeout=15) == 0
        assert service.proc.stdout is not None
        said = service.proc.stdout.read().decode().splitlines()
    finally:
        service.close()
    # the terminal says what it stopped (it said nothing)
    assert said[-1] == "estim serve: stopped; sessions stopped and recorded: " + ", ".join(
        f"{sid} in room-{i}" for i, sid in enumerate(ids, 1)
    )
    for unit in units:
        assert unit.wait_for(lambda e: e["kind"] == "output_off")["reason"] == "stop"
    from estim.journal import Journal

    with Journal.open_existing(tmp_path / "estim.db") as journal:
        for session_id in ids:
            record = journal.get(session_id)
            assert record.outcome == "stopped"
            assert record.stop_reason == "the clinic service was stopped (SIGTERM)"
