"""Write the JSON Schemas of what a charting app sends (SessionPlan) and gets back
(SessionRecord) into this directory, from the pydantic models, estim's FHIR code
system (fhir/CodeSystem-estim-observation.json) from ``estim.export.as_fhir``, and the
clinic service's OpenAPI document (openapi.json) from its FastAPI app (``estim[serve]``).

    python schemas/generate.py          # regenerate; review the diff
    python schemas/generate.py --check  # exit 1 if a file differs from the models
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema, as the models say today."""
    from estim.export.as_fhir import code_system
    from estim.plan import SessionPlan
    from estim.record import RECORD_SCHEMA_VERSION, SessionRecord

    plan = SessionPlan.model_json_schema()
    record = SessionRecord.model_json_schema()
    record["description"] = (
        f"{record.get('description', '')} Record schema version {RECORD_SCHEMA_VERSION}."
    ).strip()
    return {
        "session-plan.schema.json": _with_header(plan),
        "session-record.schema.json": _with_header(record),
        "fhir/CodeSystem-estim-observation.json": code_system(),
        "openapi.json": openapi(),
    }


def openapi() -> dict[str, Any]:
    """The clinic service's API as FastAPI generates it from the models."""
    from estim.serve.api import openapi_document

    return openapi_document()


def _with_header(schema: dict[str, Any]) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def stale() -> list[str]:
    """Names of the files that are missing or differ from the models."""
    return [
        name
        for name, schema in schemas().items()
        if not (HERE / name).exists() or (HERE / name).read_text(encoding="utf-8") != render(schema)
    ]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        names = stale()
        for name in names:
            print(f"schemas/{name} differs from the models: run python schemas/generate.py")
        return 1 if names else 0
    if argv:
        print("usage: python schemas/generate.py [--check]", file=sys.stderr)
        return 2
    for name, schema in schemas().items():
        (HERE / name).parent.mkdir(exist_ok=True)
        (HERE / name).write_text(render(schema), encoding="utf-8")
        print(f"wrote schemas/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
