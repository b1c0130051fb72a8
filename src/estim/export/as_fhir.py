"""``fhir``: sessions as one FHIR R4 ``Bundle`` of type ``transaction``, built from plain
dicts (no FHIR library at run time; the tests validate every bundle with one).

Per session:

- a ``Procedure``: ``status`` from the outcome (completed; stopped once output had
  gone on; not-done if it never did; unknown for an interrupted session whose
  output start was never recorded; in-progress while live), ``statusReason`` the
  stop reason, ``performedPeriod`` the unit's own output on/off (the output start it
  reported plus the time it measured), ``bodySite`` the site as text, ``subject`` a
  Patient and ``performer`` a Practitioner, each a logical reference holding the
  opaque patient reference and the clinician as an identifier (estim never knows a
  server's ids), ``usedReference`` the stimulator, ``note`` the plan and dose in words;
- a ``Device``: the stimulator (model, serial number, firmware; a simulated unit says
  so in its note), shared by the sessions of one unit in the bundle;
- one ``Observation`` per channel (``partOf`` the Procedure): the parameters as
  numbers a chart can plot (frequency in Hz, pulse width in us, planned and highest
  reached amplitude in mA, UCUM units), waveform and mode as text; and one
  ``Observation`` of the dose: the delivered seconds against the planned.

The procedure code is SNOMED CT 91251008 |Physical therapy procedure (procedure)|.
Why that concept: electrical dry needling is a physiotherapy procedure; 91251008 is
part of the SNOMED CT IPS Free Set (CC BY 4.0), so any clinic can use it whether or
not its country licenses SNOMED CT; and it is the most specific concept whose code
and display we could check against a published source. ``code.text`` says exactly
what was done ("Electrical dry needling (percutaneous electrical nerve stimulation)").
A clinic whose terminology server holds a more specific concept for percutaneous
electrical nerve stimulation can add its coding to ``PROCEDURE_CODE``.

Every resource carries an identifier that is the same on every export of the same
session (a UUID v5 of the session's id, start time and unit), and every entry is a
conditional create (``ifNoneExist``), so sending a bundle twice creates nothing
twice, and two sessions from different journals with the same 8-digit id never
collide.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from estim import words
from estim.durations import format_duration
from estim.export.facts import highest_reached, output_period
from estim.record import SessionRecord

SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
URI = "urn:ietf:rfc:3986"  # an identifier whose value is itself a URI (here a urn:uuid)
#: a fixed namespace for estim's UUID v5 identifiers; never change it
NAMESPACE = uuid.UUID("7c1e6a52-3f0b-5d4e-9a41-e5714d000001")

PROCEDURE_CODE: dict[str, Any] = {
    "coding": [
        {"system": SNOMED, "code": "91251008", "display": "Physical therapy procedure"},
    ],
    "text": "Electrical dry needling (percutaneous electrical nerve stimulation)",
}
DEVICE_TYPE = {"text": "Electrical stimulator (nerve and muscle, percutaneous needle electrodes)"}


def bundle(records: Sequence[SessionRecord]) -> bytes:
    entries: list[dict[str, Any]] = []
    devices: set[str] = set()
    for record in records:
        device = _device(record)
        if device["fullUrl"] not in devices:
            devices.add(device["fullUrl"])
            entries.append(device)
        entries += _session(record, device["fullUrl"])
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction"}
    if entries:
        out["entry"] = entries
    return (json.dumps(out, indent=2, ensure_ascii=False) + "\n").encode()


def _urn(*parts: object) -> str:
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, '|'.join(str(p) for p in parts))}"


def _entry(resource: dict[str, Any], full_url: str) -> dict[str, Any]:
    kind = resource["resourceType"]
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {
            "method": "POST",
            "url": kind,
            "ifNoneExist": f"identifier={URI}|{full_url}",
        },
    }


def _device(record: SessionRecord) -> dict[str, Any]:
    unit = record.unit
    full_url = _urn("device", unit.model, unit.serial_number)
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "identifier": [{"system": URI, "value": full_url}],
        "serialNumber": unit.serial_number,
        "deviceName": [{"name": unit.model, "type": "model-name"}],
        "modelNumber": unit.model,
        "type": DEVICE_TYPE,
        "version": [{"type": {"text": "firmware"}, "value": unit.firmware}],
    }
    if unit.simulated:
        resource["note"] = [
            {"text": "SIMULATED unit (estim's simulator): no current reached a patient."}
        ]
    return _entry(resource, full_url)


def _status(record: SessionRecord) -> str:
    if record.outcome is None:
        return "in-progress"
    if record.outcome == "completed":
        return "completed"
    if output_period(record) is not None:
        return "stopped"
    return "unknown" if record.outcome == "interrupted" else "not-done"


def _session(record: SessionRecord, device_url: str) -> list[dict[str, Any]]:
    key = (record.id, record.created_utc, record.unit.serial_number)
    procedure_url = _urn("procedure", *key)
    plan = record.plan
    subject: dict[str, Any] = {"type": "Patient"}
    if plan.patient_ref:
        subject["identifier"] = {"type": {"text": "patient reference"}, "value": plan.patient_ref}
    else:
        subject["display"] = "patient not recorded"
    procedure: dict[str, Any] = {
        "resourceType": "Procedure",
        "identifier": [
            {"system": URI, "value": procedure_url},
            {"type": {"text": "estim session id"}, "value": record.id},
        ],
        "status": _status(record),
        "category": {"text": "Electrotherapy"},
        "code": PROCEDURE_CODE,
        "subject": subject,
    }
    if record.outcome not in (None, "completed") and record.stop_reason:
        procedure["statusReason"] = {"text": record.stop_reason}
    period = output_period(record)
    if period is not None:
        procedure["performedPeriod"] = {"start": period.start_utc}
        if period.end_utc is not None:
            procedure["performedPeriod"]["end"] = period.end_utc
    if plan.clinician:
        procedure["performer"] = [
            {
                "actor": {
                    "type": "Practitioner",
                    "identifier": {"type": {"text": "clinician"}, "value": plan.clinician},
                    "display": plan.clinician,
                }
            }
        ]
    if plan.condition:
        procedure["reasonCode"] = [{"text": plan.condition}]
    if plan.site:
        procedure["bodySite"] = [{"text": plan.site}]
    procedure["outcome"] = {"text": words.outcome(record.outcome)}
    if record.faults:
        procedure["complication"] = [
            {"text": f"unit fault {f.name}" + (f" on channel {f.channel}" if f.channel else "")}
            for f in record.faults
        ]
    procedure["usedReference"] = [{"reference": device_url}]
    procedure["note"] = [{"text": _summary(record)}]
    if plan.notes:
        procedure["note"].append({"text": plan.notes})
    entries = [_entry(procedure, procedure_url)]
    entries.append(_dose(record, procedure_url, device_url, subject, key))
    for channel in plan.channels:
        entries.append(_channel(record, channel.channel, procedure_url, device_url, subject, key))
    return entries


def _summary(record: SessionRecord) -> str:
    plan = record.plan
    channels = "; ".join(f"channel {c.channel}: {words.channel(c)}" for c in plan.channels)
    return (
        f"estim session {record.id}: planned {format_duration(record.planned_s)} "
        f"(ramp {format_duration(plan.ramp)}), delivered {words.seconds(record.delivered_s)} "
        f"by the unit's clock; {words.outcome(record.outcome)}"
        + (f": {record.stop_reason}" if record.stop_reason else "")
        + f". {channels}."
    )


def _observation(
    record: SessionRecord,
    full_url: str,
    procedure_url: str,
    device_url: str,
    subject: dict[str, Any],
    code_text: str,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": URI, "value": full_url}],
        "partOf": [{"reference": procedure_url}],
        "status": "final" if record.outcome is not None else "preliminary",
        "category": [{"text": "Electrotherapy dose"}],
        "code": {"text": code_text},
        "subject": subject,
        "device": {"reference": device_url},
    }
    period = output_period(record)
    if period is not None:
        resource["effectivePeriod"] = {"start": period.start_utc}
        if period.end_utc is not None:
            resource["effectivePeriod"]["end"] = period.end_utc
    return resource


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _dose(
    record: SessionRecord,
    procedure_url: str,
    device_url: str,
    subject: dict[str, Any],
    key: tuple[str, ...],
) -> dict[str, Any]:
    full_url = _urn("dose", *key)
    resource = _observation(
        record, full_url, procedure_url, device_url, subject, "Stimulation time delivered"
    )
    if record.delivered_s is not None:
        resource["valueQuantity"] = _quantity(record.delivered_s, "s")
    else:
        resource["dataAbsentReason"] = {"text": "the unit's figure was not received"}
    resource["component"] = [
        {
            "code": {"text": "Stimulation time planned"},
            "valueQuantity": _quantity(record.planned_s, "s"),
        },
        {"code": {"text": "Ramp up and down"}, "valueQuantity": _quantity(record.plan.ramp, "s")},
    ]
    return _entry(resource, full_url)


def _channel(
    record: SessionRecord,
    number: int,
    procedure_url: str,
    device_url: str,
    subject: dict[str, Any],
    key: tuple[str, ...],
) -> dict[str, Any]:
    c = next(ch for ch in record.plan.channels if ch.channel == number)
    full_url = _urn("channel", number, *key)
    resource = _observation(
        record,
        full_url,
        procedure_url,
        device_url,
        subject,
        f"Electrical stimulation parameters, channel {number}",
    )
    resource["valueString"] = words.channel(c)
    components: list[dict[str, Any]] = [
        {"code": {"text": "Pulse rate"}, "valueQuantity": _quantity(c.frequency_hz, "Hz")},
        {
            "code": {"text": "Pulse width (one phase)"},
            "valueQuantity": _quantity(c.pulse_width_us, "us"),
        },
        {
            "code": {"text": "Planned peak amplitude"},
            "valueQuantity": _quantity(c.amplitude_ma, "mA"),
        },
        {"code": {"text": "Waveform"}, "valueString": words.waveform(c.waveform)},
        {
            "code": {"text": "Mode"},
            "valueString": words.rate(c) if c.mode != "continuous" else "continuous",
        },
    ]
    if c.alt_frequency_hz is not None:
        label = "Second pulse rate" if c.mode == "dense_disperse" else "Bursts per second"
        components.append(
            {"code": {"text": label}, "valueQuantity": _quantity(c.alt_frequency_hz, "Hz")}
        )
    if c.switch_s is not None:
        label = "Time on each rate" if c.mode == "dense_disperse" else "Burst length"
        components.append({"code": {"text": label}, "valueQuantity": _quantity(c.switch_s, "s")})
    reached = highest_reached(record, number)
    if reached is not None:
        components.append(
            {
                "code": {"text": "Highest amplitude reached"},
                "valueQuantity": _quantity(reached, "mA"),
            }
        )
    resource["component"] = components
    return _entry(resource, full_url)
