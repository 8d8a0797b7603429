"""The FHIR R4 resources the scenario (and the workflow tests) send, each built from a public example.

The examples are the checkout's own field data (tests/data/workflows and tests/data/exchange, each with
its SOURCES.md): like the local cluster, the demo runs from a MedCloud checkout.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "tests" / "data"
RESIDENT_ID = "urn:oid:2.16.156.10011.1.2"
INSURANCE_CARD = "urn:medcloud:insurance-card:riverton-province"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
CATEGORY_SYSTEM = "https://medcloud.io/fhir/CodeSystem/sharing-category"
# ServiceRequest.category (SNOMED CT) of each kind of request the exchange knows.
CATEGORY = {"laboratory": "108252007", "imaging": "363679005", "referral": "3457005", "consultation": "11429006"}
Json = dict[str, Any]


def example(name: str, folder: str = "workflows") -> Json:
    loaded: Json = json.loads((DATA / folder / name).read_text())
    return copy.deepcopy(loaded)


def coverage(card: str, resident: str, *, start: str = "2026-01-01", end: str = "2026-12-31") -> Json:
    """A province insurance card registration: the HRex minimal Coverage with a contained beneficiary."""
    body = example("coverage-min.json")
    body.pop("id")
    body["subscriberId"] = card
    body["contained"] = [
        {
            "resourceType": "Patient",
            "id": "p",
            "identifier": [{"system": INSURANCE_CARD, "value": card}, {"system": RESIDENT_ID, "value": resident}],
            "name": [{"family": "Chen", "given": ["Mei"]}],
            "gender": "female",
            "birthDate": "1990-03-07",
        }
    ]
    body["beneficiary"] = {"reference": "#p"}
    body["payor"] = [{"display": "Riverton Province Medical Insurance Bureau"}]
    body["class"] = [
        {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "plan"}]},
            "value": "urban-employee",
            "name": "Urban employee basic medical insurance",
        }
    ]
    body["period"] = {"start": start, "end": end}
    return body


def cbc_report(performer: str, subject: Json, issued: str, *, code: str = "58410-2") -> Json:
    """A complete blood count performed by ``performer``, with its hemoglobin Observation contained."""
    report = example("diagnosticreport-cbc.json")
    report.pop("id")
    report.pop("specimen")
    observation = example("observation-hb.json")
    observation["id"] = "hb"
    observation["code"] = {"coding": [{"system": LOINC, "code": "718-7"}], **observation["code"]}
    observation.pop("subject")
    report["contained"] = [observation]
    report["result"] = [{"reference": "#hb"}]
    report["code"] = {"coding": [{"system": LOINC, "code": code}]}
    report["category"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}]
    report["issued"] = issued
    report["subject"] = subject
    report["performer"] = [{"reference": f"Organization/{performer}"}]
    return report


def slot(schedule: str, start: str, end: str) -> Json:
    """A free Slot of ``schedule`` (the Finnish scheduling IG's example, our times)."""
    body = example("slot-fi.json")
    for key in ("id", "identifier", "serviceCategory", "appointmentType"):
        body.pop(key)
    body["schedule"] = {"reference": schedule}
    body["start"], body["end"] = start, end
    return body


def appointment(patient: str, *, slot: str | None = None, status: str = "booked", based_on: str | None = None) -> Json:
    """An Appointment for ``patient`` (Open Health Manager's example, the exchange's Patient)."""
    body = example("appointment-1.json")
    body.pop("id")
    body["status"] = status
    body["participant"][0]["actor"] = {"reference": patient}
    if slot:
        body["slot"] = [{"reference": slot}]
    if based_on:
        body["basedOn"] = [{"reference": based_on}]
    return body


def service_request(
    kind: str,
    requester: str,
    performer: str | None,
    patient: str,
    *,
    code: tuple[str, str] = (LOINC, "58410-2"),
    reason: str = "",
    supporting: tuple[str, ...] = (),
    practitioner: str = "Practitioner/dr-wang",
) -> Json:
    """A ServiceRequest from ``requester`` (its practitioner as a contained PractitionerRole) to ``performer``."""
    body: Json = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "contained": [
            {
                "resourceType": "PractitionerRole",
                "id": "requester",
                "practitioner": {"reference": practitioner},
                "organization": {"reference": f"Organization/{requester}"},
            }
        ],
        "category": [{"coding": [{"system": SNOMED, "code": CATEGORY[kind]}]}],
        "code": {"coding": [{"system": code[0], "code": code[1]}]},
        "subject": {"reference": patient},
        "requester": {"reference": "#requester"},
    }
    if performer:
        body["performer"] = [{"reference": f"Organization/{performer}"}]
    if reason:
        body["reasonCode"] = [{"text": reason}]
    if supporting:
        body["supportingInfo"] = [{"reference": ref} for ref in supporting]
    return body


def recognition_task(order: str, report: str, patient: str) -> Json:
    """The Task that closes ``order`` by the recognised ``report`` instead of repeating the test."""
    return {
        "resourceType": "Task",
        "status": "completed",
        "intent": "order",
        "focus": {"reference": f"ServiceRequest/{order}"},
        "for": {"reference": patient},
        "output": [
            {"type": {"text": "recognised result"}, "valueReference": {"reference": f"DiagnosticReport/{report}"}}
        ],
    }


def treatment_consent(card: str) -> Json:
    """The patient, known by card, permits every member to read their records for treatment (an opt-in
    privacy Consent with one purpose and no actor)."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"identifier": {"system": INSURANCE_CARD, "value": card}},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {
            "type": "permit",
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
        },
    }


def message(request: str, text: str) -> Json:
    """A message in the thread of ``request`` (ServiceRequest/<id>)."""
    return {
        "resourceType": "Communication",
        "status": "completed",
        "basedOn": [{"reference": request}],
        "payload": [{"contentString": text}],
    }


def virtual_session(patient: str, request: str, start: str, end: str, room: str) -> Json:
    """A video session for ``request``: an Appointment whose contained Location is virtual (``vi``)."""
    session = appointment(patient, based_on=request)
    session.update({"start": start, "end": end})
    session["contained"] = [
        {
            "resourceType": "Location",
            "id": "room",
            "name": "Video consultation",
            "physicalType": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/location-physical-type", "code": "vi"}]
            },
            "telecom": [{"system": "url", "value": room}],
        }
    ]
    session["participant"].append({"actor": {"reference": "#room"}, "status": "accepted"})
    return session


def consult_note(patient: str, text: bytes) -> Json:
    """A consult note (LOINC 11488-4) for ``patient``, built from the IHE MHD minimal DocumentReference."""
    doc = example("documentreference-minimal.json", "exchange")
    doc["type"] = {"coding": [{"system": LOINC, "code": "11488-4"}]}
    doc["category"] = [{"coding": [{"system": CATEGORY_SYSTEM, "code": "emr"}]}]
    doc["date"] = "2026-11-30T10:00:00+08:00"
    doc["content"] = [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(text).decode()}}]
    doc["subject"] = {"reference": patient}
    return doc


def provide_bundle(category: str, content: bytes, patient: Json, *, content_type: str | None = None) -> Json:
    """An ITI-65 Provide Document Bundle about ``patient`` (its Patient entry), from the NIST MHD test Bundle.

    The example's SubmissionSet, DocumentReference and Binary are kept (tests/data/exchange/SOURCES.md),
    their subject pointed at the patient's entry; the DocumentReference gains the type and category a
    consortium needs, the Binary carries ``content``; ``content_type``, if given, replaces the example's.
    """
    bundle = example("provide-bundle-binary.json", "exchange")
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if "subject" in resource:
            resource["subject"] = {"reference": patient_url}
        if resource["resourceType"] == "DocumentReference":
            resource["type"] = {"coding": [{"system": LOINC, "code": "18842-5"}]}
            resource["category"] = [{"coding": [{"system": CATEGORY_SYSTEM, "code": category}]}]
            if content_type is not None:
                resource["content"][0]["attachment"]["contentType"] = content_type
        if resource["resourceType"] == "Binary":
            resource["data"] = base64.b64encode(content).decode()
            if content_type is not None:
                resource["contentType"] = content_type
    bundle["entry"].append(
        {"fullUrl": patient_url, "resource": patient, "request": {"method": "POST", "url": "Patient"}}
    )
    return bundle
