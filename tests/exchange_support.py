"""What the exchange's integration tests share: its audit bucket, its callers, FHIR documents."""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from medcloud_cli.demo import fhir
from medcloud_cli.demo.scenario import new_card

DATA = Path(__file__).resolve().parent / "data" / "exchange"
CATEGORY_SYSTEM = "https://medcloud.io/fhir/CodeSystem/sharing-category"
RESIDENT_ID = "urn:oid:2.16.156.10011.1.2"
INSURANCE_CARD = "urn:medcloud:insurance-card:riverton-province"
CLIENT_ROLE = "medcloud-exchange-client"
RBAC = "rbac.authorization.k8s.io"
FHIR = {"Content-Type": "application/fhir+json"}
Json = dict[str, Any]


@dataclass
class Caller:
    """A hospital system: its token and the headers every request carries."""

    token: str
    practitioner: str = "Practitioner/dr-li"
    purpose: str | None = "TREAT"
    hospital: str | None = None
    reason: str | None = None

    def headers(self, **override: str | None) -> dict[str, str]:
        values: dict[str, str | None] = {
            "Authorization": f"Bearer {self.token}",
            "X-MedCloud-Practitioner": self.practitioner,
            "X-MedCloud-Purpose-Of-Use": self.purpose,
            "X-MedCloud-Hospital": self.hospital,
            "X-MedCloud-Break-Glass-Reason": self.reason,
        }
        values.update(override)
        return {k: v for k, v in values.items() if v is not None}


def post(http: httpx.Client, caller: Caller, path: str, body: Json, **headers: str | None) -> httpx.Response:
    """A FHIR resource POSTed as ``caller`` (its headers, ``headers`` overriding them)."""
    return http.post(path, content=json.dumps(body), headers={**caller.headers(**headers), **FHIR})


def created(response: httpx.Response) -> Json:
    """The resource a 201 answered with; anything else fails with the server's answer."""
    assert response.status_code == 201, response.text
    body: Json = response.json()
    return body


def new_patient() -> tuple[str, str]:
    """A fresh patient's province insurance card number and resident identity card number."""
    return new_card()


def ago(days: float) -> str:
    """An instant ``days`` before now, as FHIR dateTime with an offset."""
    return (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="seconds")


def document(category: str, text: bytes, subject: Json, *, type_code: str = "18842-5") -> Json:
    """A simplified publish built from the IHE example (tests/data/exchange/SOURCES.md)."""
    doc: Json = copy.deepcopy(json.loads((DATA / "documentreference-minimal.json").read_text()))
    doc["type"] = {"coding": [{"system": "http://loinc.org", "code": type_code}]}
    doc["category"] = [{"coding": [{"system": CATEGORY_SYSTEM, "code": category}]}]
    doc["date"] = "2026-11-30T10:00:00+08:00"
    doc["content"] = [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(text).decode()}}]
    doc.update(subject)
    return doc


def contained_patient(*identifiers: tuple[str, str]) -> Json:
    return {
        "contained": [
            {
                "resourceType": "Patient",
                "id": "p",
                "identifier": [{"system": s, "value": v} for s, v in identifiers],
            }
        ],
        "subject": {"reference": "#p"},
    }


def consent(
    patient: Json,
    *,
    actors: tuple[str, ...],
    purposes: tuple[str, ...] = (),
    categories: tuple[str, ...] = (),
    decision: str = "permit",
) -> Json:
    provision: Json = {"type": decision}
    if actors:
        provision["actor"] = [
            {
                "role": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]
                },
                "reference": {"reference": f"Organization/{a}"},
            }
            for a in actors
        ]
    if purposes:
        provision["purpose"] = [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p} for p in purposes
        ]
    if categories:
        provision["class"] = [{"system": CATEGORY_SYSTEM, "code": c} for c in categories]
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": patient,
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision,
    }


def outcome_of(response: httpx.Response) -> str:
    """The diagnostics of an OperationOutcome answer (and proof that it is one)."""
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert response.headers["content-type"].startswith("application/fhir+json")
    return str(body["issue"][0]["diagnostics"])


def provide_bundle(category: str, text: bytes, *identifiers: tuple[str, str], family: str = "Chalmers") -> Json:
    """An ITI-65 Provide Document Bundle (``medcloud_cli.demo.fhir.provide_bundle``) about the HL7 example
    Patient (tests/data/exchange/SOURCES.md), who carries the consortium's identifiers."""
    patient: Json = json.loads((DATA.parent / "analytics" / "patient-example.json").read_text())
    patient["identifier"] = [{"system": s, "value": v} for s, v in identifiers]
    patient["name"][0]["family"] = family
    return fhir.provide_bundle(category, text, patient)
