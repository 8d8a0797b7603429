"""ServiceRequests the workflow tests send (orders, referrals, consultations), in FHIR R4."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]
SNOMED = "http://snomed.info/sct"
CATEGORY = {"laboratory": "108252007", "imaging": "363679005", "referral": "3457005", "consultation": "11429006"}


def service_request(
    kind: str,
    requester: str,
    performer: str | None,
    patient: str,
    *,
    code: tuple[str, str] = ("http://loinc.org", "58410-2"),
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
