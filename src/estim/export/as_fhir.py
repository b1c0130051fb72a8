"""``fhir``: sessions as one FHIR R4 ``Bundle`` of type ``transaction``, built from plain
dicts (no FHIR library at run time; the tests validate every bundle with one).

Per session:

- a ``Procedure``: ``status`` from the outcome and whether output went on
  (``estim.export.facts.output_went_on``): completed; stopped once any report of
  the unit shows output went on; not-done only if the record shows it never did;
  unknown when that is not known (START accepted, then silence, or the host died);
  in-progress while live. ``statusReason`` the
  stop reason, ``performedPeriod`` the unit's own output on/off (the output start it
  reported plus the time it measured; no start if its output-on event was lost),
  ``bodySite`` the site as text, ``subject`` a
  Patient and ``performer`` a Practitioner as logical references (by identifier, see
  below: estim never knows a server's ids), ``usedReference`` the stimulator, ``note``
  the plan and dose in words;
- a ``Device``: the stimulator (model, serial number, firmware; a simulated unit says
  so in its note), shared by the sessions of one unit in the bundle;
- one ``Observation`` per channel (``partOf`` the Procedure): the parameters as
  numbers a chart can plot (frequency in Hz, pulse width in us, planned and highest
  reached amplitude in mA, UCUM units; a highest level the unit did not report, only
  its slew suggests, is a ``dataAbsentReason`` that says so), waveform and mode as
  text; and one
  ``Observation`` of the dose: the delivered seconds against the planned.

The procedure code is SNOMED CT 91251008 |Physical therapy procedure (procedure)|.
Why that concept: electrical dry needling is a physiotherapy procedure; 91251008 is
part of the SNOMED CT IPS Free Set (CC BY 4.0), so any clinic can use it whether or
not its country licenses SNOMED CT; and it is the most specific concept whose code
and display we could check against a published source. ``code.text`` says exactly
what was done ("Electrical dry needling (percutaneous electrical nerve stimulation)").
A clinic whose terminology server holds a more specific concept for percutaneous
electrical nerve stimulation can add its coding to ``PROCEDURE_CODE``.

Identifiers a server can match (the same on every export of the same session):

- the session: ``SESSION_SYSTEM`` (estim's own, https://estim.dev/fhir/sid/session),
  value ``<session id>-<start requested, UTC, compact>`` (``feed92b4-20261122T091503.123Z``):
  the 8-digit id a clinician sees, made unique across journals by the moment it began;
- its Observations: ``OBSERVATION_SYSTEM``, value ``<session value>/dose`` and
  ``<session value>/channel-<n>``;
- the unit: the clinic's device system (``[fhir] device_system``; estim's own by
  default), value ``<model>/<serial number>``;
- the patient: the clinic's patient system (``[fhir] patient_system``; estim's own by
  default) with the opaque reference the charting app passed; the clinician: the
  clinic's practitioner system (``[fhir] practitioner_system``) with the clinician as
  recorded, or, with none configured, only a display name (a name is not an identifier).

``fullUrl`` is a ``urn:uuid`` derived from, and never equal to, the identifier (a server
rewrites every string equal to a ``fullUrl`` into the id it assigns, identifiers
included, and a resend would then match nothing). Every entry is a conditional create
(``ifNoneExist`` on its identifier): sending a session's bundle twice creates nothing
the second time. A record that changed after it was sent (``estim.outbox.amend``) goes
again with the session's own entries as conditional updates (``PUT Kind?identifier=``),
which replace the first version.

Observations are coded in estim's own code system (``CODE_SYSTEM``, canonical URL
https://estim.dev/fhir/CodeSystem/observation; its terms are ``OBSERVATION_CODES``,
published as ``schemas/fhir/CodeSystem-estim-observation.json``): LOINC has no terms
for electrical-stimulation dose parameters that we could check against a published
source. Their category is HL7's observation-category ``procedure`` ("observations
resulting from interventional ... procedures"). Quantities are UCUM.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from estim import words
from estim.durations import format_duration
from estim.export.facts import output_period, output_went_on, peak, peak_words
from estim.record import SessionRecord

SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
#: estim's canonical base for its own identifier and code systems; never change it:
#: a server matches a resend by these exact strings
ESTIM_FHIR = "https://estim.dev/fhir"
SESSION_SYSTEM = f"{ESTIM_FHIR}/sid/session"
OBSERVATION_SYSTEM = f"{ESTIM_FHIR}/sid/observation"
CODE_SYSTEM = f"{ESTIM_FHIR}/CodeSystem/observation"
#: a fixed namespace for the fullUrls (UUID v5); never change it
NAMESPACE = uuid.UUID("7c1e6a52-3f0b-5d4e-9a41-e5714d000001")

#: estim's observation codes: code -> (display, definition)
OBSERVATION_CODES: dict[str, tuple[str, str]] = {
    "stimulation-time": (
        "Stimulation time delivered",
        "Output on to output off, by the stimulator's own clock.",
    ),
    "planned-stimulation-time": ("Stimulation time planned", "The dwell the plan asked for."),
    "ramp-time": ("Ramp up and down", "Time to reach full amplitude, and again to reach zero."),
    "stimulation-parameters": (
        "Electrical stimulation parameters",
        "One channel's pulse rate, width, amplitude, waveform and mode.",
    ),
    "pulse-rate": ("Pulse rate", "Pulses per second (the first rate in dense-disperse mode)."),
    "second-pulse-rate": ("Second pulse rate", "Dense-disperse mode: the other rate."),
    "time-on-each-rate": ("Time on each rate", "Dense-disperse mode: time before switching."),
    "burst-rate": ("Bursts per second", "Burst mode: how often a burst starts."),
    "burst-length": ("Burst length", "Burst mode: how long one burst lasts."),
    "pulse-width": ("Pulse width (one phase)", "Width of one phase of a pulse."),
    "planned-peak-amplitude": ("Planned peak amplitude", "The peak current the plan asked for."),
    "highest-amplitude-reached": (
        "Highest amplitude reached",
        "The highest peak current the stimulator reported delivering.",
    ),
    "waveform": ("Waveform", "Biphasic symmetric, biphasic asymmetric or monophasic."),
    "mode": ("Mode", "Continuous, burst or dense-disperse."),
}


def code_system() -> dict[str, Any]:
    """estim's observation codes as a FHIR CodeSystem resource, for a clinic's
    terminology server (published as schemas/fhir/CodeSystem-estim-observation.json)."""
    return {
        "resourceType": "CodeSystem",
        "url": CODE_SYSTEM,
        "version": "1",
        "name": "EstimObservation",
        "title": "estim observation codes",
        "status": "active",
        "experimental": False,
        "publisher": "estim",
        "description": "What estim records of an electrical-stimulation session (electrical "
        "dry needling): the dose and each channel's parameters.",
        "caseSensitive": True,
        "content": "complete",
        "count": len(OBSERVATION_CODES),
        "concept": [
            {"code": code, "display": display, "definition": definition}
            for code, (display, definition) in OBSERVATION_CODES.items()
        ],
    }


@dataclass(frozen=True)
class Systems:
    """The identifier systems of the people and things a session names: the clinic's
    own (``[fhir]`` in the config file), so its server can match them to its records."""

    patient: str = f"{ESTIM_FHIR}/sid/patient-ref"
    practitioner: str | None = None
    device: str = f"{ESTIM_FHIR}/sid/unit"


PROCEDURE_CODE: dict[str, Any] = {
    "coding": [
        {"system": SNOMED, "code": "91251008", "display": "Physical therapy procedure"},
    ],
    "text": "Electrical dry needling (percutaneous electrical nerve stimulation)",
}
DEVICE_TYPE = {"text": "Electrical stimulator (nerve and muscle, percutaneous needle electrodes)"}


def bundle(records: Sequence[SessionRecord], systems: Systems | None = None) -> bytes:
    """The sessions as one transaction Bundle (bytes of JSON)."""
    return (json.dumps(bundle_dict(records, systems), indent=2, ensure_ascii=False) + "\n").encode()


def bundle_dict(records: Sequence[SessionRecord], systems: Systems | None = None) -> dict[str, Any]:
    systems = systems or Systems()
    entries: list[dict[str, Any]] = []
    devices: set[str] = set()
    for record in records:
        device = _device(record, systems)
        if device["fullUrl"] not in devices:
            devices.add(device["fullUrl"])
            entries.append(device)
        entries += _session(record, device["fullUrl"], systems)
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction"}
    if entries:
        out["entry"] = entries
    return out


#: the most entries estim puts in one transaction it sends: Medplum refuses a transaction
#: with conditional creates of more ("requires strict isolation but has too many
#: entries"), and a small request suits any server. A session of more entries (a unit
#: of 6 channels or more) goes as several, in order: ``session_transactions``.
MOST_ENTRIES = 8


def session_transactions(
    record: SessionRecord,
    systems: Systems | None = None,
    most: int = MOST_ENTRIES,
    *,
    update: bool = False,
) -> list[dict[str, Any]]:
    """One session's bundle as transactions of at most ``most`` entries: the Device and
    the Procedure in the first. A later one refers to what an earlier one filed by its
    fullUrl; ``point_at`` replaces those with where the server filed them.

    ``update``: the record changed after it may have reached the server (a guess of
    "interrupted" replaced by the facts): the session's own resources go as
    conditional updates on their identifiers, which replace what the server holds (or
    create it); the Device, shared with other sessions, stays a conditional create."""
    entries = bundle_dict([record], systems)["entry"]
    if update:
        entries = [_as_update(e) for e in entries]
    return [
        {"resourceType": "Bundle", "type": "transaction", "entry": entries[i : i + most]}
        for i in range(0, len(entries), most)
    ]


def _as_update(entry: dict[str, Any]) -> dict[str, Any]:
    kind = entry["resource"]["resourceType"]
    if kind == "Device":
        return entry
    query = entry["request"]["ifNoneExist"]
    return {**entry, "request": {"method": "PUT", "url": f"{kind}?{query}"}}


def point_at(value: Any, filed: dict[str, str]) -> Any:
    """``value`` with every reference to a fullUrl in ``filed`` replaced by the server's
    ``Type/id`` for it."""
    if isinstance(value, dict):
        out = {k: point_at(v, filed) for k, v in value.items()}
        if isinstance(out.get("reference"), str) and out["reference"] in filed:
            out["reference"] = filed[out["reference"]]
        return out
    if isinstance(value, list):
        return [point_at(v, filed) for v in value]
    return value


def session_identifier(record: SessionRecord) -> dict[str, str]:
    """The session's identifier: its id and the moment its start was requested."""
    compact = record.created_utc.replace("-", "").replace(":", "")
    return {"system": SESSION_SYSTEM, "value": f"{record.id}-{compact}"}


def device_identifier(record: SessionRecord, systems: Systems | None = None) -> dict[str, str]:
    """The unit's identifier: model and serial number, the characters a FHIR search
    treats specially (``, | $ \\``, and ``%``) percent-encoded so a search matches it."""
    unit = record.unit
    value = _search_safe(f"{unit.model}/{unit.serial_number}")
    return {"system": (systems or Systems()).device, "value": value}


def _search_safe(text: str) -> str:
    return "".join(f"%{ord(c):02X}" if c in "%,|$\\" else c for c in text)


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    """A conditional create on the resource's first identifier; its fullUrl is derived
    from that identifier and never equal to it."""
    kind = resource["resourceType"]
    ident = resource["identifier"][0]
    key = f"{kind}|{ident['system']}|{ident['value']}"
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid5(NAMESPACE, key)}",
        "resource": resource,
        "request": {
            "method": "POST",
            "url": kind,
            # a URL query: the server decodes it once, then splits system|value
            "ifNoneExist": f"identifier={quote(ident['system'], safe=':/')}|"
            f"{quote(ident['value'], safe=':/')}",
        },
    }


def _device(record: SessionRecord, systems: Systems) -> dict[str, Any]:
    unit = record.unit
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "identifier": [device_identifier(record, systems)],
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
    return _entry(resource)


def _status(record: SessionRecord) -> str:
    if record.outcome is None:
        return "in-progress"
    if record.outcome == "completed":
        return "completed"
    return {"yes": "stopped", "no": "not-done", "unknown": "unknown"}[output_went_on(record)]


def _session(record: SessionRecord, device_url: str, systems: Systems) -> list[dict[str, Any]]:
    ident = session_identifier(record)
    plan = record.plan
    subject: dict[str, Any] = {"type": "Patient"}
    if plan.patient_ref:
        subject["identifier"] = {"system": systems.patient, "value": plan.patient_ref}
    else:
        subject["display"] = "patient not recorded"
    procedure: dict[str, Any] = {
        "resourceType": "Procedure",
        "identifier": [ident],
        "status": _status(record),
        "category": {"text": "Electrotherapy"},
        "code": PROCEDURE_CODE,
        "subject": subject,
    }
    if record.outcome not in (None, "completed") and record.stop_reason:
        procedure["statusReason"] = {"text": record.stop_reason}
    performed = _period(record)
    if performed:
        procedure["performedPeriod"] = performed
    if plan.clinician:
        actor: dict[str, Any] = {"type": "Practitioner", "display": plan.clinician}
        if systems.practitioner:
            actor["identifier"] = {"system": systems.practitioner, "value": plan.clinician}
        procedure["performer"] = [{"actor": actor}]
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
    entries = [_entry(procedure)]
    procedure_url = entries[0]["fullUrl"]
    entries.append(_dose(record, procedure_url, device_url, subject, ident["value"]))
    for channel in plan.channels:
        entries.append(
            _channel(record, channel.channel, procedure_url, device_url, subject, ident["value"])
        )
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


def code(name: str, text: str | None = None) -> dict[str, Any]:
    """A CodeableConcept in estim's code system (``text``: what a person reads)."""
    display = OBSERVATION_CODES[name][0]
    return {
        "coding": [{"system": CODE_SYSTEM, "code": name, "display": display}],
        "text": text or display,
    }


CATEGORY = [
    {
        "coding": [{"system": OBSERVATION_CATEGORY, "code": "procedure", "display": "Procedure"}],
        "text": "Electrotherapy dose",
    }
]


def _observation(
    record: SessionRecord,
    value: str,
    procedure_url: str,
    device_url: str,
    subject: dict[str, Any],
    concept: dict[str, Any],
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": OBSERVATION_SYSTEM, "value": value}],
        "partOf": [{"reference": procedure_url}],
        "status": "final" if record.outcome is not None else "preliminary",
        "category": CATEGORY,
        "code": concept,
        "subject": subject,
        "device": {"reference": device_url},
    }
    effective = _period(record)
    if effective:
        resource["effectivePeriod"] = effective
    return resource


def _period(record: SessionRecord) -> dict[str, str]:
    """The unit's output on and off as a FHIR Period: a start not received is left
    out (a Period without a start: its start is not known)."""
    period = output_period(record)
    if period is None:
        return {}
    ends = {"start": period.start_utc, "end": period.end_utc}
    return {k: v for k, v in ends.items() if v is not None}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _dose(
    record: SessionRecord,
    procedure_url: str,
    device_url: str,
    subject: dict[str, Any],
    session_value: str,
) -> dict[str, Any]:
    resource = _observation(
        record,
        f"{session_value}/dose",
        procedure_url,
        device_url,
        subject,
        code("stimulation-time"),
    )
    if record.delivered_s is not None:
        resource["valueQuantity"] = _quantity(record.delivered_s, "s")
    else:
        resource["dataAbsentReason"] = {"text": "the unit's figure was not received"}
    resource["component"] = [
        {
            "code": code("planned-stimulation-time"),
            "valueQuantity": _quantity(record.planned_s, "s"),
        },
        {"code": code("ramp-time"), "valueQuantity": _quantity(record.plan.ramp, "s")},
    ]
    return _entry(resource)


def _channel(
    record: SessionRecord,
    number: int,
    procedure_url: str,
    device_url: str,
    subject: dict[str, Any],
    session_value: str,
) -> dict[str, Any]:
    c = next(ch for ch in record.plan.channels if ch.channel == number)
    resource = _observation(
        record,
        f"{session_value}/channel-{number}",
        procedure_url,
        device_url,
        subject,
        code("stimulation-parameters", f"Electrical stimulation parameters, channel {number}"),
    )
    resource["valueString"] = words.channel(c)
    components: list[dict[str, Any]] = [
        {"code": code("pulse-rate"), "valueQuantity": _quantity(c.frequency_hz, "Hz")},
        {"code": code("pulse-width"), "valueQuantity": _quantity(c.pulse_width_us, "us")},
        {"code": code("planned-peak-amplitude"), "valueQuantity": _quantity(c.amplitude_ma, "mA")},
        {"code": code("waveform"), "valueString": words.waveform(c.waveform)},
        {
            "code": code("mode"),
            "valueString": words.rate(c) if c.mode != "continuous" else "continuous",
        },
    ]
    if c.alt_frequency_hz is not None:
        name = "second-pulse-rate" if c.mode == "dense_disperse" else "burst-rate"
        components.append(
            {"code": code(name), "valueQuantity": _quantity(c.alt_frequency_hz, "Hz")}
        )
    if c.switch_s is not None:
        name = "time-on-each-rate" if c.mode == "dense_disperse" else "burst-length"
        components.append({"code": code(name), "valueQuantity": _quantity(c.switch_s, "s")})
    reached = peak(record, number)
    if reached.exact and reached.ma:
        components.append(
            {
                "code": code("highest-amplitude-reached"),
                "valueQuantity": _quantity(reached.ma, "mA"),
            }
        )
    elif reached.ma or reached.reported:  # the unit did not report its peak: say so
        components.append(
            {
                "code": code("highest-amplitude-reached"),
                "dataAbsentReason": {
                    "text": f"the unit did not report its highest level: {peak_words(reached)}"
                },
            }
        )
    resource["component"] = components
    return _entry(resource)
