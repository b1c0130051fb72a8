"""The JSON Schemas in schemas/ are the models' own, and a record says its version."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def generator() -> dict[str, Any]:
    return runpy.run_path(str(ROOT / "schemas" / "generate.py"), run_name="schemas_generate")


def test_the_committed_schemas_match_the_models() -> None:
    assert generator()["stale"]() == [], "run python schemas/generate.py and commit the result"


def test_the_check_fails_when_a_schema_drifts(tmp_path: Path) -> None:
    copy = tmp_path / "schemas"
    copy.mkdir()
    script = copy / "generate.py"
    script.write_text((ROOT / "schemas" / "generate.py").read_text())
    for name in generator()["schemas"]():
        (copy / name).parent.mkdir(exist_ok=True)
        (copy / name).write_text((ROOT / "schemas" / name).read_text())
    ok = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    drifted = json.loads((copy / "session-plan.schema.json").read_text())
    drifted["properties"]["dwell"]["description"] = "something else"
    (copy / "session-plan.schema.json").write_text(json.dumps(drifted))
    bad = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stdout.strip() == (
        "schemas/session-plan.schema.json differs from the models: run python schemas/generate.py"
    )


def test_the_schemas_describe_the_fields_a_charting_app_uses() -> None:
    plan = json.loads((ROOT / "schemas" / "session-plan.schema.json").read_text())
    record = json.loads((ROOT / "schemas" / "session-record.schema.json").read_text())
    assert plan["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"dwell", "channels", "patient_ref", "clinician", "site"} <= set(plan["properties"])
    assert "ChannelPlan" in plan["$defs"]
    assert record["properties"]["schema_version"]["default"] == 1
    assert {"id", "unit", "plan", "outcome", "delivered_s", "events"} <= set(record["properties"])
    assert "version 1" in record["description"]


def test_the_fhir_code_system_is_a_valid_codesystem_with_every_code_estim_writes() -> None:
    from fhir.resources.R4B.codesystem import CodeSystem

    from estim.export.as_fhir import CODE_SYSTEM, OBSERVATION_CODES

    text = (ROOT / "schemas" / "fhir" / "CodeSystem-estim-observation.json").read_text()
    published = CodeSystem.model_validate_json(text)
    assert published.url == CODE_SYSTEM
    assert [c.code for c in published.concept or []] == list(OBSERVATION_CODES)
