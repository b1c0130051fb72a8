"""What ``estim serve`` serves: its rooms, its clinicians' tokens and where it listens.

From the clinic's config file (the one ``estim.config`` reads)::

    [serve]
    bind = "0.0.0.0:8470"                # default 127.0.0.1:8470 (this machine only)
    hosts = ["estim.clinic.example"]     # names browsers use for it (Host/Origin checks)

    [serve.clinicians]                   # estim serve --new-token NAME prints a line
    "Dr Ada Lovelace" = "sha256:4f8b..." # the token's SHA-256, never the token itself

    [rooms.room-2]
    name = "Room 2"
    port = "/dev/serial/by-id/usb-ACME_A0001-if00"
    amplitude_max_ma = 20                # a room's limits only narrow the clinic's

and from the command line (``--room ROOM=URL``, ``--demo``, ``--bind``), which
replace the file's rooms and bind address. Tokens are random (32 bytes), so one
SHA-256 is enough to store them: nothing can be guessed from the hash, and a request
is checked in microseconds. Every error names the file, the line and the key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from estim.config import ConfigError, _line_of, _read_limits
from estim.durations import format_duration
from estim.limits import ClinicLimits

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470
ROOM_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
HASH = re.compile(r"sha256:[0-9a-f]{64}")

#: three simulated rooms: ``estim serve --demo``
DEMO_ROOMS = (
    ("room-1", "Room 1", "sim://?serial=DEMO-0001"),
    ("room-2", "Room 2", "sim://?serial=DEMO-0002"),
    ("room-3", "Room 3", "sim://?serial=DEMO-0003"),
)


@dataclass(frozen=True)
class RoomConfig:
    """One treatment room: its unit's port, and the limits that hold in it (the
    clinic's, narrowed by the room's own)."""

    id: str
    name: str
    port: str
    limits: ClinicLimits = field(default_factory=ClinicLimits)


@dataclass(frozen=True)
class ServeSettings:
    rooms: tuple[RoomConfig, ...]
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: the names a browser may use for the service besides its address (Host, Origin)
    hosts: tuple[str, ...] = ()
    #: token hash ("sha256:...") -> the clinician it names
    clinicians: dict[str, str] = field(default_factory=dict)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def problems(self) -> list[str]:
        """Why the service must not start with these settings."""
        out = []
        if not self.rooms:
            out.append(
                "no rooms to serve: add [rooms.ID] sections to the clinic config, or give "
                "--room ROOM=URL, or --demo"
            )
        if not self.loopback and not self.clinicians:
            out.append(
                f"binding to {self.host} lets other machines reach the units, so every "
                "clinician needs a token: add [serve.clinicians] to the clinic config "
                "(estim serve --new-token NAME prints a line for it), or bind to 127.0.0.1"
            )
        return out

    def clinician_for(self, token: str) -> str | None:
        """The clinician a token belongs to, or None (compared in constant time)."""
        digest = token_hash(token)
        found = None
        for known, name in self.clinicians.items():
            if hmac.compare_digest(known, digest):
                found = name
        return found


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh random token and the hash the config keeps of it."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[::1]:PORT``, ``HOST`` or ``:PORT``. Raises ``ConfigError``."""
    text = text.strip()
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*)(?::(\d{1,5}))?", text)
    if not match or not text:
        raise ConfigError(f"--bind {text!r} is not HOST:PORT (e.g. 127.0.0.1:8470)")
    host = match.group(1).strip("[]") or DEFAULT_HOST
    port = int(match.group(2)) if match.group(2) else DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise ConfigError(f"--bind {text!r}: port {port} is outside 1-65535")
    return host, port


@dataclass(frozen=True)
class RoomLimits(ClinicLimits):
    """The clinic's limits narrowed by a room's, judged by the library's own checks
    (``ClinicLimits``); a refusal names the room where the room's limit is the one
    that holds."""

    room: str = ""
    own: ClinicLimits = field(default_factory=ClinicLimits)

    def _words(self, problem: str) -> str:
        for f in fields(ClinicLimits):
            value = getattr(self.own, f.name)
            if value is not None and value == getattr(self, f.name):
                shown = format_duration(value) if f.name[:5] in ("dwell", "ramp_") else f"{value:g}"
                if f"the clinic's {_WORD[f.name]} {shown}" in problem:
                    return problem.replace("the clinic's", f"room {self.room}'s")
        return problem

    def plan_problems(self, plan: Any) -> list[str]:
        return [self._words(p) for p in super().plan_problems(plan)]

    def amplitude_problem(self, channel: int, ma: float) -> str | None:
        problem = super().amplitude_problem(channel, ma)
        return None if problem is None else self._words(problem)


_WORD = {
    "amplitude_max_ma": "maximum",
    "frequency_min_hz": "minimum",
    "frequency_max_hz": "maximum",
    "pulse_width_max_us": "maximum",
    "dwell_min": "minimum",
    "dwell_max": "maximum",
    "ramp_min": "minimum",
}


def narrow(clinic: ClinicLimits, room: ClinicLimits, room_id: str = "") -> ClinicLimits:
    """The room's limits within the clinic's: the lower maximum, the higher minimum."""
    values: dict[str, Any] = {}
    for f in fields(ClinicLimits):
        a, b = getattr(clinic, f.name), getattr(room, f.name)
        if a is None or b is None:
            values[f.name] = b if a is None else a
        else:
            values[f.name] = min(a, b) if f.name.endswith("max") or "_max_" in f.name else max(a, b)
    if room == ClinicLimits():
        return ClinicLimits(**values)
    return RoomLimits(**values, room=room_id, own=room)


def _wider(clinic: ClinicLimits, room: ClinicLimits) -> str | None:
    """A room limit that would widen the clinic's, in words, or None."""
    for f in fields(ClinicLimits):
        a, b = getattr(clinic, f.name), getattr(room, f.name)
        if a is None or b is None:
            continue
        is_max = f.name.endswith("max") or "_max_" in f.name
        if (is_max and b > a) or (not is_max and b < a):
            return f"{f.name} {b:g} is {'above' if is_max else 'below'} the clinic's {a:g}"
    return None


def room_option(text: str) -> tuple[str, str]:
    """``--room ROOM=URL``. Raises ``ConfigError``."""
    room, sep, url = text.partition("=")
    room, url = room.strip(), url.strip()
    if not sep or not url:
        raise ConfigError(f"--room {text!r} is not ROOM=URL (e.g. room-1=/dev/ttyUSB0)")
    if not ROOM_ID.fullmatch(room):
        raise ConfigError(
            f"--room {text!r}: room id {room!r} must be lowercase letters, digits and dashes "
            "(at most 31)"
        )
    return room, url


def load(
    path: Path | None,
    clinic: ClinicLimits,
    *,
    rooms: tuple[tuple[str, str], ...] = (),
    demo: bool = False,
    bind: str | None = None,
) -> ServeSettings:
    """The settings from the config file at ``path`` (None: no file), with the
    command line's rooms (or the demo's) and bind address in place of the file's."""
    data: dict[str, Any] = {}
    text = ""
    if path is not None and path.exists():
        text = path.read_text(encoding="utf-8")
        data = _toml(text)  # estim.config has read it already: it parses

    def fail(section: str | None, key: str, message: str) -> ConfigError:
        line = _line_of(text, section, key)
        where = f"{path}:{line}" if line else str(path)
        full = ".".join(part for part in (section, key) if part)
        return ConfigError(f"{where}: {full}: {message}")

    serve = _table(data.get("serve", {}), "serve", fail)
    for key in serve:
        if key not in ("bind", "hosts", "clinicians"):
            raise fail("serve", key, "unknown key; known: bind, clinicians, hosts")
    host, port = DEFAULT_HOST, DEFAULT_PORT
    if "bind" in serve:
        if not isinstance(serve["bind"], str):
            raise fail("serve", "bind", f"{serve['bind']!r} must be text, HOST:PORT")
        try:
            host, port = parse_bind(serve["bind"])
        except ConfigError as err:
            raise fail("serve", "bind", str(err).removeprefix("--bind ")) from None
    if bind is not None:
        host, port = parse_bind(bind)
    hosts = serve.get("hosts", [])
    if not isinstance(hosts, list) or not all(
        isinstance(h, str) and re.fullmatch(r"[A-Za-z0-9.-]+", h) for h in hosts
    ):
        raise fail("serve", "hosts", 'must be a list of host names, e.g. ["estim.clinic.lan"]')
    clinicians: dict[str, str] = {}
    for name, digest in _table(serve.get("clinicians", {}), "serve.clinicians", fail).items():
        if not isinstance(digest, str) or not HASH.fullmatch(digest):
            raise fail(
                "serve.clinicians",
                name,
                'must be "sha256:" and 64 hex digits, a token\'s hash (estim serve --new-token '
                "NAME prints one); never the token itself",
            )
        if digest in clinicians:
            raise fail("serve.clinicians", name, f"has the same token as {clinicians[digest]!r}")
        clinicians[digest] = str(name)
    if demo:
        room_list = tuple(RoomConfig(i, n, u, clinic) for i, n, u in DEMO_ROOMS)
    elif rooms:
        seen: set[str] = set()
        for room_id, _ in rooms:
            if room_id in seen:
                raise ConfigError(f"--room {room_id} is given twice")
            seen.add(room_id)
        # a room the file describes keeps its name and its limits: only the port moves
        described = {r.id: r for r in _rooms(data.get("rooms", {}), clinic, fail)}
        room_list = tuple(
            replace(described[i], port=u) if i in described else RoomConfig(i, i, u, clinic)
            for i, u in rooms
        )
    else:
        room_list = _rooms(data.get("rooms", {}), clinic, fail)
    return ServeSettings(
        rooms=room_list, host=host, port=port, hosts=tuple(hosts), clinicians=clinicians
    )


def _toml(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
    data: dict[str, Any] = tomllib.loads(text)
    return data


def _table(raw: Any, name: str, fail: Callable[[str | None, str, str], ConfigError]) -> Any:
    if not isinstance(raw, dict):
        raise fail(None, name, "must be a table")
    return raw


def _rooms(
    raw: Any, clinic: ClinicLimits, fail: Callable[[str | None, str, str], ConfigError]
) -> tuple[RoomConfig, ...]:
    out = []
    ports: dict[str, str] = {}
    for room_id, body in _table(raw, "rooms", fail).items():
        section = f"rooms.{room_id}"
        if not ROOM_ID.fullmatch(room_id):
            raise fail(section, "", "a room id is lowercase letters, digits and dashes")
        body = _table(body, section, fail)
        port = body.get("port")
        if not isinstance(port, str) or not port.strip():
            raise fail(section, "port", "is missing: the unit's port, e.g. /dev/ttyUSB0")
        if port in ports:
            raise fail(section, "port", f"{port!r} is room {ports[port]}'s port too")
        ports[port] = room_id
        name = body.get("name", room_id)
        if not isinstance(name, str) or not name.strip() or len(name) > 60:
            raise fail(section, "name", "must be text of 1 to 60 characters")
        own = {k: v for k, v in body.items() if k not in ("name", "port")}
        room_limits = _read_limits(own, lambda _s, k, m, at=section: fail(at, k, m))
        wider = _wider(clinic, room_limits)
        if wider:
            raise fail(section, "", f"{wider}; a room can only narrow the clinic's limits")
        out.append(
            RoomConfig(room_id, name.strip(), port.strip(), narrow(clinic, room_limits, room_id))
        )
    return tuple(out)


def with_rooms(settings: ServeSettings, rooms: tuple[RoomConfig, ...]) -> ServeSettings:
    return replace(settings, rooms=rooms)
