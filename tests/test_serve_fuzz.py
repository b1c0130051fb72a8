"""A property-based fuzzer against the OpenAPI document (schemathesis): every operation,
with requests the document allows and requests it does not, must never be answered
5xx, and must answer problem+json when it refuses. The units are simulated; whatever
the fuzzer manages to start is stopped at the end, and no unit was ever driven past
its limits (the units' own refusals, NACKs, stay at zero)."""

from __future__ import annotations

import os
from collections import Counter
from itertools import product
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from .serve_parts import clinic

#: cases per operation and mode (positive: what the document allows; negative: not)
EXAMPLES = int(os.environ.get("ESTIM_FUZZ_EXAMPLES", "50"))
#: an event stream never ends: it has tests of its own (test_serve_api)
SKIP = {"/api/v1/events"}


def test_the_api_fuzzed_from_its_openapi_document_never_answers_5xx(tmp_path: Path) -> None:
    with clinic(tmp_path) as c:
        c.connected()
        schema = schemathesis.openapi.from_dict(c.get("/openapi.json").json())
        cases: Counter[str] = Counter()
        statuses: Counter[int] = Counter()
        failures: list[str] = []
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path in SKIP:
                continue
            fixed: list[dict[str, str]] = [{}]
            if "{room_id}" in operation.path:
                fixed.append({"room_id": "room-1"})  # a room that exists, as well as any
            for mode, path_parameters in product(
                (GenerationMode.POSITIVE, GenerationMode.NEGATIVE), fixed
            ):

                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                @given(
                    case=operation.as_strategy(
                        generation_mode=mode, path_parameters=path_parameters or None
                    )
                )
                def run(case: schemathesis.Case) -> None:
                    kwargs = case.as_transport_kwargs(base_url=c.base)
                    headers = dict(kwargs.get("headers") or {})
                    cookies = kwargs.get("cookies") or {}
                    if cookies:
                        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
                    response = c.http.request(
                        kwargs["method"],
                        kwargs["url"],
                        params=kwargs.get("params"),
                        headers=headers,
                        content=_content(kwargs),
                    )
                    label = case.operation.label
                    cases[label] += 1
                    statuses[response.status_code] += 1
                    if response.status_code >= 500:
                        failures.append(f"{label}: {response.status_code} {response.text}")
                    if response.status_code >= 400:
                        kind = response.headers.get("content-type", "")
                        assert kind == "application/problem+json", (case, response.text)

                try:
                    run()
                except Unsatisfiable:  # nothing to get wrong: an operation without inputs
                    assert mode == GenerationMode.NEGATIVE
        total = sum(cases.values())
        print(
            f"fuzzer: {total} cases over {len(cases)} operations; statuses {dict(sorted(statuses.items()))}"
        )
        assert failures == []
        assert total >= 10 * EXAMPLES  # (an operation without inputs has only one case)
    for name, unit in c.units.items():
        assert not unit.events("rejected"), name  # no frame the unit refused
        assert all(e.data["reason"] != "fault:WATCHDOG" for e in unit.events("output_off")), name


def _content(kwargs: dict[str, object]) -> bytes | None:
    import json

    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data") or kwargs.get("content")
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes):
        return data
    return None
