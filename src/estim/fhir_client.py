"""Posting a transaction Bundle to a FHIR server, and what its answer means for the
outbox. The standard library's urllib: no runtime dependency for one POST.

``post`` returns an ``Answer`` for anything the server said (any HTTP status) and
raises ``Unreachable`` when nothing usable came back (refused, reset, timed out, a
response cut off). ``judge`` turns an answer into one of three verdicts:

- ``sent``: 2xx and a ``transaction-response`` Bundle whose every entry is 2xx;
- ``refused``: the server refused the record itself, permanently: a 4xx (not 401,
  403, 404, 405, 408 or 429) whose body is an OperationOutcome; the reason is its
  words. Sending it again unchanged would be refused again;
- ``retry``: anything else (5xx, 429 and 408, a 401/403 token or 404/405 address
  problem that the clinic fixes in its config, a redirect (never followed: the token
  would go with it), a 4xx without an OperationOutcome,
  which is a proxy's and not the FHIR server's, a 2xx that is not a complete
  transaction-response), with the server's ``Retry-After`` when it gave one.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

#: an answer larger than this is not read whole (a transaction-response of one session
#: is a few kilobytes)
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: 4xx answers that concern where and how estim sends, not the record
RETRY_4XX = {401, 403, 404, 405, 408, 429}
USER_AGENT = "estim (FHIR outbox)"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as it came: urllib would turn the POST into a GET and
    carry the token to wherever the redirect points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class Unreachable(Exception):
    """No usable answer: the connection was refused, reset, timed out or cut short."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Verdict:
    kind: str  # sent | refused | retry
    detail: str  # one line: what the server said, or why it is not usable
    status: int | None = None
    retry_after_s: float | None = None
    #: sent: where the server filed each entry, in order (``Type/id``)
    locations: tuple[str, ...] = ()


def post(base_url: str, body: bytes, *, token: str | None, timeout_s: float) -> Answer:
    """POST ``body`` (a transaction Bundle) to ``base_url``. Raises ``Unreachable``."""
    headers = {
        "Content-Type": "application/fhir+json; charset=utf-8",
        "Accept": "application/fhir+json",
        "User-Agent": USER_AGENT,
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base_url, data=body, method="POST", headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return _answer(response.status, response.headers, response)
    except urllib.error.HTTPError as err:
        with err:
            return _answer(err.code, err.headers, err)
    except urllib.error.URLError as err:
        raise Unreachable(f"cannot reach {base_url}: {_reason(err.reason)}") from None
    except TimeoutError:
        raise Unreachable(f"{base_url} did not answer within {timeout_s:g} s") from None
    except (http.client.HTTPException, ConnectionError, OSError) as err:
        raise Unreachable(f"the connection to {base_url} failed: {_reason(err)}") from None


def _answer(status: int, headers: Any, stream: Any) -> Answer:
    try:
        body = stream.read(MAX_ANSWER_BYTES + 1)
    except TimeoutError:
        raise Unreachable("the server's answer stopped coming (timed out)") from None
    except (http.client.HTTPException, ConnectionError, OSError) as err:
        raise Unreachable(f"the server's answer was cut off: {_reason(err)}") from None
    return Answer(status, {k.lower(): v for k, v in headers.items()}, body)


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ConnectionResetError):
        return "connection reset"
    if isinstance(reason, TimeoutError):
        return "timed out"
    return " ".join(str(reason).split()) or type(reason).__name__


def judge(answer: Answer, *, entries: int) -> Verdict:
    """What the answer to a transaction of ``entries`` entries means for the outbox."""
    status = answer.status
    data = _json(answer.body) if len(answer.body) <= MAX_ANSWER_BYTES else None
    outcome = (
        data if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome" else None
    )
    if 200 <= status < 300:
        problem = _incomplete(data, entries)
        if problem:
            return Verdict("retry", f"HTTP {status} but {problem}", status)
        assert isinstance(data, dict)  # (a complete transaction-response)
        locations = tuple(_type_and_id(e["response"]["location"]) for e in data["entry"])
        return Verdict("sent", f"HTTP {status}", status, locations=locations)
    words = _outcome_words(outcome) if outcome else _text(answer)
    if 400 <= status < 500 and status not in RETRY_4XX and outcome is not None:
        return Verdict("refused", f"HTTP {status}: {words}", status)
    hint = {
        301: " (the server redirects: check [fhir] base_url)",
        302: " (the server redirects: check [fhir] base_url)",
        303: " (the server redirects: check [fhir] base_url)",
        307: " (the server redirects: check [fhir] base_url)",
        308: " (the server redirects: check [fhir] base_url)",
        401: " (check the [fhir] token)",
        403: " (check the [fhir] token's rights)",
        404: " (check [fhir] base_url)",
        405: " (check [fhir] base_url)",
    }.get(status, "")
    return Verdict(
        "retry",
        f"HTTP {status}{hint}: {words}",
        status,
        retry_after_s=retry_after(answer.headers.get("retry-after")),
    )


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _incomplete(data: Any, entries: int) -> str | None:
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        return "the answer is not a Bundle"
    if data.get("type") != "transaction-response":
        return f"the answer is a {data.get('type')!r} Bundle, not a transaction-response"
    got = data.get("entry") or []
    if len(got) != entries:
        return f"the answer has {len(got)} entries for the {entries} sent"
    for entry in got:
        response = entry.get("response") or {}
        code = str(response.get("status", "")).split(" ")[0]
        if not (code.isdigit() and 200 <= int(code) < 300):
            return f"an entry was answered {code or 'nothing'}"
        if not _type_and_id(str(response.get("location", ""))):
            return "an entry was answered without the location where it was filed"
    return None


def _type_and_id(location: str) -> str:
    """``Procedure/123`` from ``Procedure/123``, ``Procedure/123/_history/2`` or an
    absolute URL ending so; "" if it names no resource."""
    parts = location.split("?")[0].rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2][:1].isupper() and parts[-1]:
        return f"{parts[-2]}/{parts[-1]}"
    return ""


def _outcome_words(outcome: dict[str, Any]) -> str:
    parts = []
    for issue in outcome.get("issue") or []:
        text = (issue.get("details") or {}).get("text") or issue.get("diagnostics") or ""
        where = ", ".join(issue.get("expression") or [])
        parts.append(f"{issue.get('code', '?')}: {text}" + (f" ({where})" if where else ""))
    return _one_line("; ".join(parts) or "an OperationOutcome without issues")


def _text(answer: Answer) -> str:
    kind = answer.headers.get("content-type", "no content type").split(";")[0]
    sample = answer.body[:120].decode("utf-8", "replace")
    return _one_line(f"not a FHIR OperationOutcome ({kind}): {sample}" if sample else f"({kind})")


def _one_line(text: str, most: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= most else text[: most - 3] + "..."


def retry_after(value: str | None, *, now_s: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date;
    None if absent or unreadable, at most a day."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), 86400.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import time

    seconds = when.timestamp() - (time.time() if now_s is None else now_s)
    return min(max(seconds, 0.0), 86400.0)
