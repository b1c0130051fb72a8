"""Who may ask the service anything, and from where (SAFETY.md 10).

An ASGI middleware in front of every route:

- **Host**: the request must name the service by an address or name it serves
  (``127.0.0.1:8470``, ``localhost:8470``, a ``[serve] hosts`` name): a page on
  another site whose name was re-pointed at this machine (DNS rebinding) is refused.
- **Origin**: a request that changes anything and comes from a browser must come
  from the service's own page (its ``Origin`` is this very host, ``Sec-Fetch-Site``
  is same-origin): a page elsewhere cannot drive a unit (CSRF). Bodies must be JSON,
  which a cross-site form cannot send (FastAPI checks the content type).
- **Who**: with clinicians' tokens in the config, every API request carries one
  (``Authorization: Bearer TOKEN``) or the session cookie ``POST /api/v1/login``
  set from it; the clinician it names is journaled with each action. Without
  tokens the service only binds to loopback, and says so in each action.
- **Floods**: a token bucket per client address answers 429 past the rate; a stop
  is never rate-limited.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from estim.serve.actions import Who
from estim.serve.settings import ServeSettings, is_loopback

#: the largest request body taken (a plan is about 1 kB)
MAX_BODY = 64 * 1024
COOKIE = "estim_session"
COOKIE_MAX_AGE_S = 12 * 3600
NO_LOGIN = "no login (a service on this machine only)"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: need no login: the console's own files, the API's description, logging in
OPEN_PATHS = ("/api/v1/login", "/api/v1/openapi.json")


def problem(status: int, title: str, detail: str, **extra: Any) -> tuple[int, bytes]:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return status, json.dumps(body).encode()


@dataclass
class Bucket:
    tokens: float
    at: float


@dataclass
class RateLimit:
    """Requests per second per client address, with a burst."""

    per_s: float
    burst: float
    _buckets: dict[str, Bucket] = field(default_factory=dict)

    def take(self, key: str, now: float) -> float:
        """0 if allowed, else seconds to wait."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 10_000:  # many addresses: forget the idle ones
                self._buckets = {k: b for k, b in self._buckets.items() if now - b.at < 60}
            bucket = self._buckets[key] = Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.per_s)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.per_s


class Logins:
    """Session cookies: a random id per login, naming its clinician, for 12 hours."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, tuple[str, float]] = {}

    def new(self, clinician: str) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._ids = {k: v for k, v in self._ids.items() if v[1] > now}
            self._ids[sid] = (clinician, now + COOKIE_MAX_AGE_S)
        return sid

    def clinician(self, sid: str) -> str | None:
        with self._lock:
            found = self._ids.get(sid)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def end(self, sid: str) -> None:
        with self._lock:
            self._ids.pop(sid, None)


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        settings: ServeSettings,
        logins: Logins,
        *,
        reads: RateLimit | None = None,
        changes: RateLimit | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.logins = logins
        self.reads = reads or RateLimit(per_s=100, burst=200)
        self.changes = changes or RateLimit(per_s=10, burst=30)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refused = self.check(scope, headers)
        if refused is not None:
            status, body = refused
            extra = []
            if status == 401:
                extra.append((b"www-authenticate", b'Bearer realm="estim"'))
            if status == 429:
                extra.append((b"retry-after", b"1"))
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/problem+json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"cache-control", b"no-store"),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await self.app(scope, receive, send)
        except Exception as err:
            if not client_gone(err):
                raise
            # an event stream whose client went away: nothing to answer, nothing wrong

    def check(self, scope: Scope, headers: dict[str, str]) -> tuple[int, bytes] | None:
        """A refusal (status and problem body), or None to let the request through;
        sets ``scope["state"]["who"]``."""
        host = headers.get("host", "")
        if not self.host_allowed(host):
            return problem(
                400,
                "Unknown host",
                f"this service does not answer to the host name {host!r}; use "
                f"http://{self.settings.host}:{self.settings.port}/ (or a name in the clinic "
                "config's [serve] hosts)",
            )
        method = scope["method"]
        path: str = scope["path"]
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            return problem(
                413 if length.isdigit() else 400,
                "Request too large",
                f"a request body may be at most {MAX_BODY} bytes (this one says {length[:20]})",
            )
        changing = method not in READ_METHODS
        origin = headers.get("origin")
        if changing and origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return problem(
                403,
                "Cross-site request",
                f"a page at {origin} may not change anything on this service; use the "
                "console this service serves",
            )
        fetch_site = headers.get("sec-fetch-site")
        if changing and fetch_site not in (None, "same-origin", "none"):
            return problem(
                403,
                "Cross-site request",
                f"a {fetch_site} request may not change anything on this service",
            )
        client = scope.get("client") or ("?", 0)
        address = str(client[0])
        clinician = self.identify(headers)
        needs_login = bool(self.settings.clinicians) and path.startswith("/api/")
        if needs_login and clinician is None and not path.startswith(OPEN_PATHS):
            return problem(
                401,
                "Login required",
                "this service needs a clinician's token: send Authorization: Bearer TOKEN, "
                "or log in on the console",
            )
        if not path.endswith(("/stop", "/stop-all")):  # a stop is never turned away
            now = time.monotonic()
            wait = self.reads.take(address, now)
            if not wait and changing:
                wait = self.changes.take(address, now)
            if wait:
                return problem(
                    429,
                    "Too many requests",
                    f"too many requests from {address}; try again in {max(wait, 0.1):.1f} s",
                )
        where = f"{address}:{client[1]}"
        if origin:
            where += f" origin {origin}"
        agent = headers.get("user-agent")
        if agent:
            where += f" ({agent[:80]})"
        who = Who(clinician or NO_LOGIN, where)
        scope.setdefault("state", {})["who"] = who
        return None

    def identify(self, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return self.settings.clinician_for(auth[7:].strip())
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and value:
                return self.logins.clinician(value)
        return None

    def host_allowed(self, host: str) -> bool:
        """Whether the Host header names this service (DNS rebinding: a name that is
        not ours, pointed at our address, is refused)."""
        name, port = _split_host(host)
        if port is None:
            port = 80
        if port != self.settings.port or not name:
            return False
        if name in self.settings.hosts or name == "localhost":
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        bind = self.settings.host
        if is_loopback(bind):
            return address.is_loopback
        try:
            bound = ipaddress.ip_address(bind)
        except ValueError:
            return address.is_loopback  # bound to a name: that name is in hosts
        return bound.is_unspecified or address == bound or address.is_loopback


def _split_host(host: str) -> tuple[str, int | None]:
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return "", None
        name, rest = host[1:end], host[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port_text = host.partition(":")
    if port_text:
        if not port_text.isdigit() or len(port_text) > 5:
            return "", None
        return name, int(port_text)
    return name, None


def client_gone(err: BaseException) -> bool:
    """Whether ``err`` only says that a client closed its connection (FastAPI's event
    stream keep-alive task finds it so, and its task group raises that as a group)."""
    import anyio

    inner = getattr(err, "exceptions", None)
    if inner is not None:
        return bool(inner) and all(client_gone(e) for e in inner)
    return isinstance(err, anyio.BrokenResourceError | anyio.ClosedResourceError)
