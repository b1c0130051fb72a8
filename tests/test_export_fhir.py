"""FHIR export: every bundle is validated by an independent FHIR library
(fhir.resources, R4B models) and by the rules a FHIR server applies to a transaction
that the models alone do not check (references resolve, each entry is a conditional
create on an identifier with a system, distinct from its fullUrl; every code has a
system). A bundle a server would reject, or could not match on a resend, fails here.
tests/test_fhir_server.py sends them to a real FHIR engine."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import pytest
from fhir.resources.R4B.bundle import Bundle

from estim.export import export
from estim.export.as_fhir import (
    CODE_SYSTEM,
    OBSERVATION_CODES,
    OBSERVATION_SYSTEM,
    SESSION_SYSTEM,
    Systems,
    bundle as fhir_bundle,
)
from estim.record import SessionRecord

from .records_helpers import eight_channels, live_and_interrupted, varied_journal

VALIDATED: list[int] = []  # bundles validated in this module (reported at the end)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[SessionRecord]:
    base = tmp_path_factory.mktemp("fhir")
    made = varied_journal(base / "estim.db")
    made.append(eight_channels(base / "eight.db"))
    made.extend(live_and_interrupted(base / "crashed.db"))
    return made


def valid_bundle(
    records: Sequence[SessionRecord], systems: Systems | None = None
) -> dict[str, Any]:
    """The bundle for ``records``, after every check; fails the test if any fails."""
    data = export("fhir", records) if systems is None else fhir_bundle(records, systems)
    Bundle.model_validate_json(data)  # the FHIR library's own validation (raises)
    bundle = json.loads(data)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "transaction"
    entries = bundle.get("entry", [])
    urls = [e["fullUrl"] for e in entries]
    assert len(urls) == len(set(urls)), "fullUrl must be unique in a bundle"
    for entry in entries:
        resource, request = entry["resource"], entry["request"]
        assert entry["fullUrl"].startswith("urn:uuid:")
        assert request["method"] == "POST"
        assert request["url"] == resource["resourceType"]
        first = resource["identifier"][0]
        name, _, query = request["ifNoneExist"].partition("=")
        system, _, value = query.partition("|")
        assert (name, unquote(system), unquote(value)) == ("identifier", *first.values())
        for ident in _identifiers(resource):
            assert ident["system"].startswith(("https://", "http://", "urn:")), ident
            assert ident["value"] != entry["fullUrl"]  # a server would rewrite it
            assert not set(ident["value"]) & set(",|$\\"), ident  # special in a search
        assert "id" not in resource  # a POST in a transaction carries no id
        for reference in _references(resource):
            assert reference in urls, f"{reference} does not resolve inside the bundle"
        if resource["resourceType"] == "Observation":
            assert not ("valueQuantity" in resource and "dataAbsentReason" in resource)
            for concept in [resource["code"], *(c["code"] for c in resource["component"])]:
                assert [c["system"] for c in concept["coding"]] == [CODE_SYSTEM], concept
                assert concept["coding"][0]["code"] in OBSERVATION_CODES
            assert resource["category"][0]["coding"][0]["system"].startswith("http://terminology")
    check_bindings(bundle)
    VALIDATED.append(1)
    return bundle


#: required bindings of the codes estim writes (FHIR R4), which the library does not check
REQUIRED = {
    "Procedure.status": {
        "preparation",
        "in-progress",
        "not-done",
        "on-hold",
        "stopped",
        "completed",
        "entered-in-error",
        "unknown",
    },
    "Observation.status": {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    },
    "Device.deviceName.type": {
        "udi-label-name",
        "user-friendly-name",
        "patient-reported-name",
        "manufacturer-name",
        "model-name",
        "other",
    },
}


def check_bindings(bundle: dict[str, Any]) -> None:
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        kind = resource["resourceType"]
        if kind in ("Procedure", "Observation"):
            status = resource["status"]
            assert status in REQUIRED[f"{kind}.status"], f"{kind}.status {status}"
        if kind == "Device":
            for name in resource.get("deviceName", []):
                assert name["type"] in REQUIRED["Device.deviceName.type"], name["type"]
        for quantity in _quantities(resource):
            assert quantity["system"] == "http://unitsofmeasure.org"
            assert quantity["code"] in {"s", "Hz", "us", "mA"}, quantity


def _quantities(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        own = [value["valueQuantity"]] if "valueQuantity" in value else []
        return own + [q for k, v in value.items() if k != "valueQuantity" for q in _quantities(v)]
    if isinstance(value, list):
        return [q for v in value for q in _quantities(v)]
    return []


def _identifiers(value: Any) -> list[dict[str, Any]]:
    """Every Identifier in a resource: its own and those in logical references."""
    if isinstance(value, dict):
        own = value.get("identifier", [])
        found = own if isinstance(own, list) else [own]
        return found + [i for k, v in value.items() if k != "identifier" for i in _identifiers(v)]
    if isinstance(value, list):
        return [i for v in value for i in _identifiers(v)]
    return []


def _references(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for v in value.values() for r in _references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    return []


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == kind]


def test_every_session_alone_all_together_and_none(records: list[SessionRecord]) -> None:
    for record in records:
        bundle = valid_bundle([record])
        assert len(resources(bundle, "Procedure")) == 1
        assert len(resources(bundle, "Device")) == 1
        assert len(resources(bundle, "Observation")) == 1 + len(record.plan.channels)
    together = valid_bundle(records)
    assert len(resources(together, "Procedure")) == len(records)
    serials = {r.unit.serial_number for r in records}
    assert {d["serialNumber"] for d in resources(together, "Device")} == serials
    assert len(resources(together, "Device")) == len(serials)  # one per unit
    assert valid_bundle([]) == {"resourceType": "Bundle", "type": "transaction"}


def test_procedure_status_follows_the_outcome(records: list[SessionRecord]) -> None:
    statuses = [resources(valid_bundle([r]), "Procedure")[0]["status"] for r in records]
    outcomes = [r.outcome for r in records]
    assert list(zip(outcomes, statuses, strict=True)) == [
        ("completed", "completed"),
        ("stopped", "stopped"),
        ("faulted", "stopped"),
        ("completed", "completed"),
        ("refused", "not-done"),
        ("completed", "completed"),
        (None, "in-progress"),
        ("interrupted", "stopped"),  # output had gone on
        ("interrupted", "unknown"),  # never recorded going on: nobody knows
    ]


def test_the_procedure_says_who_where_what_and_when(records: list[SessionRecord]) -> None:
    record = records[0]
    (procedure,) = resources(valid_bundle([record]), "Procedure")
    assert procedure["code"]["coding"] == [
        {
            "system": "http://snomed.info/sct",
            "code": "91251008",
            "display": "Physical therapy procedure",
        }
    ]
    assert "dry needling" in procedure["code"]["text"]
    assert procedure["subject"] == {
        "type": "Patient",
        "identifier": {"system": Systems().patient, "value": "P-0042"},
    }
    # no practitioner system configured: a name is shown, never passed off as an identifier
    assert procedure["performer"][0]["actor"] == {
        "type": "Practitioner",
        "display": "Dr Ada Lovelace",
    }
    assert procedure["bodySite"] == [{"text": "left vastus lateralis"}]
    assert procedure["reasonCode"] == [{"text": "knee osteoarthritis"}]
    compact = record.created_utc.replace("-", "").replace(":", "")
    assert procedure["identifier"] == [
        {"system": SESSION_SYSTEM, "value": f"{record.id}-{compact}"}
    ]
    period = procedure["performedPeriod"]
    start, end = (
        datetime.fromisoformat(period[k].replace("Z", "+00:00")) for k in ("start", "end")
    )
    assert (end - start).total_seconds() == record.delivered_s == 60.0
    on = next(e for e in record.events if e.kind == "output_started")
    assert period["start"] == on.utc  # the unit's output on, as reported
    assert "statusReason" not in procedure
    assert "channel 2: 8 mA, 2 Hz alternating with 100 Hz every 3 s" in procedure["note"][0]["text"]


def test_an_early_end_has_a_reason_and_a_fault_a_complication(records: list[SessionRecord]) -> None:
    (stopped,) = resources(valid_bundle([records[1]]), "Procedure")
    assert stopped["statusReason"] == {"text": "operator"}
    (faulted,) = resources(valid_bundle([records[2]]), "Procedure")
    assert faulted["complication"] == [{"text": "unit fault LEAD_OFF on channel 1"}]
    (refused,) = resources(valid_bundle([records[4]]), "Procedure")
    assert "performedPeriod" not in refused
    assert "performer" not in refused  # no clinician recorded
    assert refused["subject"]["identifier"]["value"] == "P-0009"


def test_the_clinic_s_identifier_systems(records: list[SessionRecord]) -> None:
    clinic = Systems(
        patient="https://clinic.example/fhir/sid/mrn",
        practitioner="https://clinic.example/fhir/sid/staff",
        device="https://clinic.example/fhir/sid/asset",
    )
    bundle = valid_bundle(records[:1], clinic)
    (procedure,) = resources(bundle, "Procedure")
    (device,) = resources(bundle, "Device")
    assert procedure["subject"]["identifier"] == {"system": clinic.patient, "value": "P-0042"}
    assert procedure["performer"][0]["actor"]["identifier"] == {
        "system": clinic.practitioner,
        "value": "Dr Ada Lovelace",
    }
    assert device["identifier"] == [{"system": clinic.device, "value": "estim-sim/SIM-0001"}]
    for observation in resources(bundle, "Observation"):
        assert observation["subject"] == procedure["subject"]
        assert observation["identifier"][0]["system"] == OBSERVATION_SYSTEM
        assert observation["identifier"][0]["value"].startswith(
            procedure["identifier"][0]["value"] + "/"
        )


def test_the_device_is_the_stimulator(records: list[SessionRecord]) -> None:
    (device,) = resources(valid_bundle([records[0]]), "Device")
    assert device["serialNumber"] == "SIM-0001"
    assert device["deviceName"] == [{"name": "estim-sim", "type": "model-name"}]
    assert device["version"] == [{"type": {"text": "firmware"}, "value": records[0].unit.firmware}]
    assert "SIMULATED" in device["note"][0]["text"]
    bundle = valid_bundle([records[0]])
    (procedure,) = resources(bundle, "Procedure")
    device_url = next(
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Device"
    )
    assert procedure["usedReference"] == [{"reference": device_url}]


def test_dose_and_parameters_are_observations_with_ucum_units(records: list[SessionRecord]) -> None:
    observations = resources(valid_bundle([records[0]]), "Observation")
    dose = next(o for o in observations if o["code"]["coding"][0]["code"] == "stimulation-time")
    assert dose["valueQuantity"] == {
        "value": 60.0,
        "unit": "s",
        "system": "http://unitsofmeasure.org",
        "code": "s",
    }
    ch1 = next(o for o in observations if o["code"]["text"].endswith("channel 1"))
    values = {
        c["code"]["text"]: c.get("valueQuantity", c.get("valueString")) for c in ch1["component"]
    }
    assert ch1["code"]["coding"][0]["code"] == "stimulation-parameters"
    assert values["Pulse rate"]["value"] == 2
    assert values["Pulse width (one phase)"]["code"] == "us"
    assert values["Planned peak amplitude"]["value"] == 12
    assert values["Highest amplitude reached"]["value"] == 14
    assert values["Waveform"] == "biphasic, symmetric"
    ch2 = next(o for o in observations if o["code"]["text"].endswith("channel 2"))
    values = {
        c["code"]["text"]: c.get("valueQuantity", c.get("valueString")) for c in ch2["component"]
    }
    assert values["Second pulse rate"]["value"] == 100
    assert values["Time on each rate"]["value"] == 3
    live_dose = resources(valid_bundle([records[6]]), "Observation")[0]
    assert live_dose["status"] == "preliminary"
    assert "dataAbsentReason" in live_dose


def test_the_same_session_always_gives_the_same_identifiers(records: list[SessionRecord]) -> None:
    assert export("fhir", records[:1]) == export("fhir", records[:1])
    one = {e["fullUrl"] for e in valid_bundle(records[:1])["entry"]}
    two = {e["fullUrl"] for e in valid_bundle(records[1:2])["entry"]}
    assert len(one & two) == 1  # only the shared unit


def _drop(key: str) -> Any:
    return lambda p: p.pop(key)


def _set(key: str, value: Any) -> Any:
    return lambda p: p.__setitem__(key, value)


@pytest.mark.parametrize(
    "mutate",
    [
        _set("performedWhen", "2026-11-22"),  # no such element
        _drop("status"),  # required
        _drop("subject"),  # required
        _set("category", [{"text": "x"}]),  # 0..1 in R4
        _set("performedPeriod", {"start": "yesterday"}),  # not a dateTime
    ],
    ids=["unknown element", "no status", "no subject", "category a list", "bad dateTime"],
)
def test_the_library_rejects_a_broken_procedure(records: list[SessionRecord], mutate: Any) -> None:
    broken = json.loads(export("fhir", records[:1]))
    mutate(broken["entry"][1]["resource"])
    with pytest.raises(ValueError, match="validation error"):
        Bundle.model_validate(broken)


def test_codes_outside_their_required_value_sets_fail_here(records: list[SessionRecord]) -> None:
    """fhir.resources checks a code's syntax, not its binding; ``valid_bundle`` checks
    the required bindings of the codes estim writes."""
    broken = json.loads(export("fhir", records[:1]))
    broken["entry"][1]["resource"]["status"] = "finished"
    with pytest.raises(AssertionError, match="finished"):
        check_bindings(broken)


def test_count_of_validated_bundles() -> None:
    assert len(VALIDATED) >= 30
    print(f"\n{len(VALIDATED)} FHIR bundles validated with fhir.resources R4B")
