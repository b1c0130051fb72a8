"""A real FHIR engine for the tests, and a fault proxy to put in front of it.

``start_server()`` runs ``tests/fhir_server/server.mjs``: Medplum's FhirRouter and
MemoryRepository (npm, pinned by ``tests/fhir_server/package-lock.json``) behind
node:http. Without Node or its packages a test is skipped with one line saying how to
install them, and under CI (``$CI`` set, as ``.ci/run`` runs) that is a failure: CI
must test against the real engine.

``FaultProxy`` sits between estim and that server and breaks connections the ways a
clinic's network and servers do, one chosen fault per connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent / "fhir_server"
ROUTER = HERE / "node_modules" / "@medplum" / "fhir-router" / "package.json"
INSTALL = "npm ci --prefix tests/fhir_server"
TOKEN = "estim-test-token"


def _missing() -> str | None:
    node = shutil.which("node")
    if node is None:
        return (
            f"the FHIR test server needs Node.js 20+ (apt-get install nodejs npm), then {INSTALL}"
        )
    if not ROUTER.exists():
        return f"the FHIR test server's packages are not installed: run {INSTALL}"
    return None


def engine_version() -> str:
    """The FHIR engine the tests ran against, as installed."""
    version = json.loads(ROUTER.read_text())["version"]
    return f"Medplum @medplum/fhir-router {version} (MemoryRepository), Node {_node_version()}"


def _node_version() -> str:
    out = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@dataclass
class FhirServer:
    base_url: str
    token: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.base_url}/{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            data: dict[str, Any] = json.load(response)
            return data

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"{self.base_url}/{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/fhir+json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)

    def delete(self, path: str) -> int:
        request = urllib.request.Request(
            f"{self.base_url}/{path}",
            method="DELETE",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)

    def search(self, kind: str, **params: str) -> list[dict[str, Any]]:
        """Every resource of ``kind`` matching ``params`` (all pages)."""
        query = urllib.parse.urlencode({**params, "_count": "1000"})
        bundle = self.get(f"{kind}?{query}")
        return [e["resource"] for e in bundle.get("entry", [])]

    def count(self, kind: str, **params: str) -> int:
        query = urllib.parse.urlencode({**params, "_summary": "count"})
        return int(self.get(f"{kind}?{query}")["total"])


@contextlib.contextmanager
def start_server(tmp: Path) -> Iterator[FhirServer]:
    """A fresh FHIR server on a free loopback port; skips (fails under CI) without Node."""
    problem = _missing()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test against the real FHIR engine: {problem}", pytrace=False)
        pytest.skip(problem)
    flags = (
        ["--experimental-websocket"] if int(_node_version().lstrip("v").split(".")[0]) < 22 else []
    )
    log = tmp / "fhir-server.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            ["node", *flags, str(HERE / "server.mjs"), "--port", "0", "--token", TOKEN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=HERE,
        )
    assert process.stdout is not None
    assert process.stdin is not None
    try:
        port = _listening(process, log)
        yield FhirServer(f"http://127.0.0.1:{port}/fhir/R4", TOKEN, process, log)
    finally:
        process.stdin.close()  # the server exits when its stdin closes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def _listening(process: subprocess.Popen[bytes], log: Path, within_s: float = 60.0) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + within_s
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, left))
        if not ready:
            raise AssertionError(f"the FHIR server did not start within {within_s:g} s: {log}")
        chunk = os.read(process.stdout.fileno(), 1)
        if not chunk:
            raise AssertionError(f"the FHIR server exited: {log.read_text()[-2000:]}")
        line += chunk
    words = line.decode().split()
    assert words[0] == "LISTENING", line
    return int(words[1])


# --- the fault proxy -----------------------------------------------------------------------

#: what the proxy can do to one connection
KINDS = (
    "ok",  # forwarded, answered
    "reset",  # reset at once, before the request reached the server
    "http_500",  # answered 500 by the proxy; the server never saw the request
    "http_429",  # answered 429 Retry-After: 120 by the proxy
    "timeout",  # the request is held until the client gives up; the server never saw it
    "reset_mid_response",  # the server committed; half its answer, then a reset
    "lost_after_commit",  # the server committed; its answer is dropped (reset)
    "timeout_after_commit",  # the server committed; its answer is held until the client gives up
    "http_502_after_commit",  # the server committed; the proxy answers 502 instead
)
RETRY_AFTER_S = 120


@dataclass
class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` (host, port) that applies
    ``choose(n)`` (a kind from ``KINDS``) to its n-th connection, one connection at a
    time. ``down()`` closes its listening socket (connections are refused) until
    ``up()``. ``injected`` counts what it did."""

    upstream: tuple[str, int]
    choose: Callable[[int], str]
    injected: Counter[str] = field(default_factory=Counter)
    committed: int = 0  # requests the server answered, whatever the client then got

    def __post_init__(self) -> None:
        self._listener: socket.socket | None = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self._want_down = False
        self._closing = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir/R4"

    def _listen(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(16)
        s.settimeout(0.02)
        return s

    def down(self) -> None:
        """Returns once the port refuses connections (the proxy's own thread closes its
        listening socket: closing it under a thread blocked in accept would not)."""
        self._set(want_down=True)

    def up(self) -> None:
        self._set(want_down=False)

    def _set(self, *, want_down: bool) -> None:
        with self._changed:
            self._want_down = want_down
            self._changed.wait_for(lambda: (self._listener is None) == want_down, timeout=10)
            assert (self._listener is None) == want_down, "the proxy did not change state"

    def close(self) -> None:
        self._closing = True
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        n = 0
        try:
            while not self._closing:
                with self._changed:
                    if self._want_down and self._listener is not None:
                        self._listener.close()
                        self._listener = None
                    elif not self._want_down and self._listener is None:
                        self._listener = self._listen(self.port)
                    self._changed.notify_all()
                    listener = self._listener
                if listener is None:
                    with self._changed:
                        self._changed.wait(0.02)
                    continue
                try:
                    conn, _ = listener.accept()
                except (TimeoutError, OSError):
                    continue
                with conn:
                    kind = self.choose(n)
                    n += 1
                    self.injected[kind] += 1
                    self._handle(conn, kind)
        finally:
            with self._changed:
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None

    def _handle(self, conn: socket.socket, kind: str) -> None:
        conn.settimeout(30)
        if kind == "reset":
            _reset(conn)
            return
        request = _read_request(conn)
        if request is None:
            return
        if kind == "http_500":
            _answer(conn, 500, "Internal Server Error", "exception", "the server failed")
            return
        if kind == "http_429":
            _answer(conn, 429, "Too Many Requests", "throttled", "slow down", RETRY_AFTER_S)
            return
        if kind == "timeout":
            _hold(conn)
            return
        response = self._forward(request)
        self.committed += 1
        if kind == "ok":
            conn.sendall(response)
        elif kind == "reset_mid_response":
            conn.sendall(response[: len(response) // 2])
            _reset(conn)
        elif kind == "lost_after_commit":
            _reset(conn)
        elif kind == "timeout_after_commit":
            _hold(conn)
        elif kind == "http_502_after_commit":
            _answer(conn, 502, "Bad Gateway", "transient", "the upstream answer was lost")
        else:  # pragma: no cover
            raise AssertionError(kind)

    def _forward(self, request: bytes) -> bytes:
        with socket.create_connection(self.upstream, timeout=30) as up:
            up.sendall(request)
            chunks = []
            while chunk := up.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def _read_request(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    lines = [
        line
        for line in head.split(b"\r\n")
        if not line.lower().startswith((b"connection:", b"keep-alive:"))
    ]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body


def _answer(
    conn: socket.socket,
    status: int,
    reason: str,
    code: str,
    text: str,
    retry_after: int | None = None,
) -> None:
    body = json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "details": {"text": text}}],
        }
    ).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/fhir+json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)


def _reset(conn: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed server or a middlebox does."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _hold(conn: socket.socket) -> None:
    """Answer nothing until the client gives up and closes."""
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass
