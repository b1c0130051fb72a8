"""The clinic service under web load: do the units' heartbeats ever wait on the web server?

    python bench/serve_load.py              # 3 units, 60 s quiet, then 60 s under load
    python bench/serve_load.py --seconds 20 --streams 50   # a quicker look

Processes, as a clinic runs them: three units (``estim simulate --tcp --json``, the
Python simulator, which logs ``output_off.max_frame_gap_ms``: the worst silence
between valid frames while output was on), the service (``estim.serve`` with those
three rooms, as ``estim serve`` runs it, in a child process), and this process as the
web clients, on asyncio.

Two phases in the same run, on the same units:

1. **quiet**: a session of ``--seconds`` in every room (started through the API),
   and no other web traffic;
2. **load**: again a session in every room, while ``--streams`` event streams are
   open (each reading every event) and ``--workers`` clients send requests as fast as
   the service answers them: room state, records, the action log, over-limit
   amplitude changes (refused: nothing sent), a start in a busy room (409), malformed
   JSON (400). The service's rate limit is raised for the run, so the requests are
   served rather than turned away with 429.

Each phase ends with a stop all (under load: while the flood goes on), ``--seconds``
after the sessions started; each unit's ``output_off`` gives the worst gap of the
phase, whether its watchdog fired, and how long after the request its output went
off (the units log ``time.monotonic()``, the same clock as this process). The
service also times its cyclic garbage collector's passes (``gc.callbacks``; each
holds the interpreter lock, so no heartbeat goes out while one runs) and the run
reports them per generation. Writes ``bench/serve_load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
HEARTBEAT_GOAL_MS = 150.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Sim:
    """``estim simulate --tcp --json``: its log lines, read on demand."""

    def __init__(self, serial: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "estim",
                "simulate",
                "--tcp",
                "127.0.0.1:0",
                "--json",
                f"serial={serial}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = self.proc.stdout.readline().split(" ", 1)[1].strip()

    def next_off(self, timeout: float) -> dict[str, Any]:
        """The next ``output_off`` (blocking read of the unit's own log)."""
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line:
                break
            event: dict[str, Any] = json.loads(line)
            if event["kind"] == "output_off":
                return event
        raise RuntimeError("no output_off from the unit")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


SERVICE = """
import gc, json, sys, time
from pathlib import Path
from estim.serve.guard import RateLimit
from estim.serve.service import Service, serve_forever
from estim.serve.settings import RoomConfig, ServeSettings
port, db, pauses_file, *ports = sys.argv[1:]
rooms = tuple(RoomConfig(f"room-{i}", f"Room {i}", p) for i, p in enumerate(ports, 1))
settings = ServeSettings(rooms=rooms, port=int(port))
many = RateLimit(per_s=1e6, burst=1e6)
began, pauses = [0.0], {0: [], 1: [], 2: []}
def timed(phase, info):  # the collector's pauses: the interpreter lock is held throughout
    if phase == "start":
        began[0] = time.perf_counter()
    else:
        pauses[info["generation"]].append((time.perf_counter() - began[0]) * 1000)
gc.callbacks.append(timed)
try:
    serve_forever(Service(settings, journal_path=db, reads=many, changes=many))
finally:
    Path(pauses_file).write_text(json.dumps(pauses))
"""

PLAN = {
    "dwell": 60,
    "ramp": "5s",
    "channels": [{"channel": 1, "frequency_hz": 2, "pulse_width_us": 250, "amplitude_ma": 5}],
}


async def wait_connected(base: str, rooms: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < end:
            with contextlib.suppress(httpx.TransportError):
                answer = await client.get(f"{base}/api/v1/rooms")
                if [r["link"] for r in answer.json()] == ["connected"] * rooms:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError("the service did not connect its rooms")


async def start_all(base: str, rooms: int, dwell: float) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for i in range(1, rooms + 1):
            answer = await client.post(
                f"{base}/api/v1/rooms/room-{i}/sessions", json={**PLAN, "dwell": dwell}
            )
            if answer.status_code != 201:
                raise RuntimeError(f"room-{i}: {answer.status_code} {answer.text}")


async def stream(host: str, port: int, stop: asyncio.Event, counts: Counter[str]) -> None:
    """One event stream, read line by line until ``stop``."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /api/v1/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    await writer.drain()
    counts["streams_opened"] += 1
    tail = b""
    try:
        while not stop.is_set():
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            except asyncio.TimeoutError:
                continue
            if not chunk:
                counts["streams_closed_by_service"] += 1
                return
            counts["bytes"] += len(chunk)
            text = tail + chunk  # a marker split between two reads is still seen (once:
            counts["session_events"] += text.count(b"event: session\n")  # the tail is
            counts["rooms_events"] += text.count(b"event: rooms\n")  # shorter than one)
            tail = chunk[-12:]
    finally:
        writer.close()


async def flood(base: str, stop: asyncio.Event, statuses: Counter[int], worker: int) -> None:
    requests: list[tuple[str, str, Any]] = [
        ("GET", "/api/v1/rooms", None),
        ("GET", "/api/v1/rooms/room-2", None),
        ("GET", "/api/v1/sessions?limit=5", None),
        ("GET", "/api/v1/actions?limit=20", None),
        ("POST", "/api/v1/rooms/room-1/amplitude", {"channel": 1, "amplitude_ma": 900}),
        ("POST", "/api/v1/rooms/room-3/sessions", PLAN),
        ("POST", "/api/v1/rooms/room-2/sessions", b'{"dwell": '),
        ("GET", "/api/v1/presets", None),
    ]
    i = worker
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        while not stop.is_set():
            method, path, body = requests[i % len(requests)]
            i += 1
            try:
                if isinstance(body, bytes):
                    answer = await client.request(
                        method, path, content=body, headers={"Content-Type": "application/json"}
                    )
                else:
                    answer = await client.request(method, path, json=body)
                statuses[answer.status_code] += 1
            except httpx.HTTPError as err:
                statuses[-1] += 1
                print(f"  client error: {err!r}", file=sys.stderr)


def stop_all(host: str, port: int) -> tuple[int, float, float]:
    """POST /api/v1/stop-all on a connection of its own; (status, sent at, answered
    after): the units log ``time.monotonic()``, the clock ``sent at`` is read from."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.connect()
        asked = time.monotonic()
        connection.request("POST", "/api/v1/stop-all")
        status = connection.getresponse().status
        return status, asked, time.monotonic() - asked
    finally:
        connection.close()


async def phase(
    base: str, sims: list[Sim], seconds: float, streams: int, workers: int
) -> dict[str, Any]:
    host, port = base.removeprefix("http://").split(":")
    stop = asyncio.Event()
    counts: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    tasks = [asyncio.create_task(stream(host, int(port), stop, counts)) for _ in range(streams)]
    while counts["streams_opened"] < streams:
        await asyncio.sleep(0.05)
    started = time.monotonic()
    # the dwell outlasts the phase: each session is ended by the stop all, not its dwell
    await start_all(base, len(sims), min(600, seconds + 60))
    tasks += [asyncio.create_task(flood(base, stop, statuses, w)) for w in range(workers)]
    await asyncio.sleep(seconds)
    loop = asyncio.get_running_loop()
    # stop all from a thread of its own, while the flood goes on: the time it is sent is
    # not the time this busy loop gets round to it
    status, asked, answered = await loop.run_in_executor(None, stop_all, host, int(port))
    offs = await asyncio.gather(*(loop.run_in_executor(None, s.next_off, 30) for s in sims))
    stop.set()
    elapsed = time.monotonic() - started
    await asyncio.gather(*tasks)
    requests = sum(statuses.values())
    return {
        "seconds": round(elapsed, 1),
        "event_streams": streams,
        "flood_clients": workers,
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "events_read": dict(counts),
        "worst_gap_ms": [off["max_frame_gap_ms"] for off in offs],
        "reasons": [off["reason"] for off in offs],
        "watchdog_faults": sum(1 for off in offs if off["reason"] == "fault:WATCHDOG"),
        "stop_all_status": status,
        "stop_all_to_output_off_ms": [round((off["t"] - asked) * 1000, 1) for off in offs],
        "stop_all_answered_ms": round(answered * 1000, 1),
    }


def gc_pauses(path: Path) -> dict[str, Any]:
    """Per generation of the service's cyclic garbage collector, over both phases: how
    many passes, the longest and their sum (each holds the interpreter lock, so no
    unit's heartbeat goes out while one runs)."""
    if not path.exists():
        return {}
    out: dict[str, Any] = {}
    for generation, ms in json.loads(path.read_text()).items():
        out[f"gen{generation}"] = {
            "passes": len(ms),
            "longest_ms": round(max(ms, default=0.0), 2),
            "total_ms": round(sum(ms), 1),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--rooms", type=int, default=3)
    args = parser.parse_args()
    if not 50 <= args.seconds <= 590:
        parser.error("--seconds: 50-590 (each session's dwell is 10 s longer, then stop all)")
    sys.setswitchinterval(0.001)  # (the stop-all thread is not kept waiting by the loop)
    load_at_start = os.getloadavg()[0]  # other work on the machine: the gaps' noise floor
    print(f"{platform.platform()}, {os.cpu_count()} cores, load {load_at_start:.2f}")
    sims = [Sim(f"LOAD-{i}") for i in range(1, args.rooms + 1)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        service = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SERVICE,
                str(port),
                f"{tmp}/estim.db",
                f"{tmp}/gc.json",
                *(s.port for s in sims),
            ],
            env={**os.environ, "ESTIM_HOME": tmp},
        )
        try:
            asyncio.run(wait_connected(base, len(sims)))
            print(f"quiet: a {args.seconds:g} s session in each of {len(sims)} rooms, no web load")
            quiet = asyncio.run(phase(base, sims, args.seconds, 0, 0))
            print(f"  worst heartbeat gap {quiet['worst_gap_ms']} ms; {quiet['reasons']}")
            print(f"  stop all: output off after {quiet['stop_all_to_output_off_ms']} ms")
            print(f"load: {args.streams} event streams and {args.workers} clients flooding")
            load = asyncio.run(phase(base, sims, args.seconds, args.streams, args.workers))
            print(
                f"  {load['requests']} requests ({load['requests_per_s']}/s) {load['statuses']}; "
                f"events read {load['events_read']}"
            )
            print(f"  worst heartbeat gap {load['worst_gap_ms']} ms; {load['reasons']}")
            print(f"  stop all: output off after {load['stop_all_to_output_off_ms']} ms")
        finally:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(15)
            except subprocess.TimeoutExpired:
                service.kill()
            for sim in sims:
                sim.close()
        collector = gc_pauses(Path(tmp) / "gc.json")
    print(f"  the service's garbage collector, both phases: {collector}")
    worst = max(load["worst_gap_ms"])
    met = (
        worst < HEARTBEAT_GOAL_MS
        and load["watchdog_faults"] == 0
        and load["server_errors_5xx"] == 0
        and max(load["stop_all_to_output_off_ms"]) < 100
    )
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.platform()}, {os.cpu_count()} cores",
        "load_average_at_start": round(load_at_start, 2),
        "goal": f"worst heartbeat gap < {HEARTBEAT_GOAL_MS:g} ms under load, 0 watchdog faults, "
        "0 5xx, stop all to every unit's output off within one heartbeat period (100 ms)",
        "met": met,
        "quiet": quiet,
        "load": load,
        "service_gc_pauses_ms": collector,
    }
    (HERE / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"worst gap under load {worst} ms (quiet: {max(quiet['worst_gap_ms'])} ms); goal met: {met}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
