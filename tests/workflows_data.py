"""FHIR resources the workflow tests send, each built from a public example (tests/data/workflows/SOURCES.md)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "workflows"
RESIDENT_ID = "urn:oid:2.16.156.10011.1.2"
INSURANCE_CARD = "urn:medcloud:insurance-card:riverton-province"
Json = dict[str, Any]


def example(name: str) -> Json:
    loaded: Json = json.loads((DATA / name).read_text())
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
    observation["code"] = {"coding": [{"system": "http://loinc.org", "code": "718-7"}], **observation["code"]}
    observation.pop("subject")
    report["contained"] = [observation]
    report["result"] = [{"reference": "#hb"}]
    report["code"] = {"coding": [{"system": "http://loinc.org", "code": code}]}
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
