"""One de-identified FHIR resource -> one flat row: the columns the indicators group and count by.

Every row keeps the whole (de-identified) resource as JSON in ``resource``, so a question the columns do
not answer is still one ``json_extract`` away; the columns are what the partitioning and the indicators
need: the month, the patient's pseudonym, the organisations on either side, the code and the status.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

UNKNOWN_MONTH = "unknown"

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("resource_type", pa.string()),
        ("month", pa.string()),
        ("patient", pa.string()),
        ("status", pa.string()),
        ("category", pa.string()),
        ("code", pa.string()),
        ("from_org", pa.string()),
        ("to_org", pa.string()),
        ("value", pa.float64()),
        ("systolic", pa.float64()),
        ("diastolic", pa.float64()),
        ("resource", pa.string()),
    ]
)
"""``from_org``: the requester, publisher or performer that made the record; ``to_org``: the one it is for
(a referral's receiver). ``value``: a quantity's value; ``systolic``/``diastolic``: a blood pressure's."""

# The element giving a resource's month, first match wins (dates are already reduced or shifted).
_WHEN = (
    "effectiveDateTime",
    "effectiveInstant",
    "issued",
    "authoredOn",
    "sent",
    "start",
    "created",
    "date",
    "recorded",
)
_PERIODS = ("effectivePeriod", "period", "executionPeriod")
_SYSTOLIC, _DIASTOLIC = "8480-6", "8462-4"
ORGANIZATION = "Organization/"


def month_of(resource: Mapping[str, Any]) -> str:
    """``YYYY-MM`` of the resource's main date, or ``unknown``."""
    for key in _WHEN:
        value = resource.get(key)
        if isinstance(value, str) and len(value) >= 7:
            return value[:7]
    for key in _PERIODS:
        period = resource.get(key)
        if isinstance(period, dict) and isinstance(period.get("start"), str) and len(period["start"]) >= 7:
            return str(period["start"])[:7]
    return UNKNOWN_MONTH


def _reference(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, dict):
        ref = value.get("reference")
        return ref if isinstance(ref, str) else None
    return None


def _org(value: Any, resource: Mapping[str, Any]) -> str | None:
    """The member named by a reference: ``Organization/<m>``, or a contained PractitionerRole's organization."""
    ref = _reference(value)
    if ref and ref.startswith("#"):
        contained = [c for c in resource.get("contained") or [] if isinstance(c, dict) and c.get("id") == ref[1:]]
        ref = _reference(contained[0].get("organization")) if contained else None
    return ref.removeprefix(ORGANIZATION) if ref and ref.startswith(ORGANIZATION) else None


def _first_code(concept: Any) -> str | None:
    if isinstance(concept, list):
        concept = concept[0] if concept else None
    if isinstance(concept, dict):
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and coding.get("code"):
                return str(coding["code"])
    return None


def _component(resource: Mapping[str, Any], code: str) -> float | None:
    for component in resource.get("component") or []:
        if _first_code(component.get("code")) == code:
            quantity = component.get("valueQuantity") or {}
            if isinstance(quantity.get("value"), int | float):
                return float(quantity["value"])
    return None


def _patient(resource: Mapping[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        return str(resource.get("id"))
    for key in ("subject", "patient", "beneficiary", "for"):
        ref = _reference(resource.get(key))
        if ref and ref.startswith("Patient/"):
            return ref.removeprefix("Patient/")
    for participant in resource.get("participant") or []:  # an Appointment names its patient as a participant
        ref = _reference(participant.get("actor")) if isinstance(participant, dict) else None
        if ref and ref.startswith("Patient/"):
            return ref.removeprefix("Patient/")
    return None


def _organisations(resource: Mapping[str, Any]) -> tuple[str | None, str | None]:
    rtype = resource.get("resourceType")
    if rtype == "ServiceRequest":
        return _org(resource.get("requester"), resource), _org(resource.get("performer"), resource)
    if rtype == "Task":
        return _org(resource.get("requester"), resource), _org(resource.get("owner"), resource)
    if rtype == "DocumentReference":
        return _org(resource.get("custodian"), resource) or _org(resource.get("author"), resource), None
    if rtype == "Communication":
        return _org(resource.get("sender"), resource), _org(resource.get("recipient"), resource)
    if rtype == "Appointment":
        actors = [_org(p.get("actor"), resource) for p in resource.get("participant") or [] if isinstance(p, dict)]
        return next((a for a in actors if a), None), None
    return _org(resource.get("performer"), resource) or _org(resource.get("managingOrganization"), resource), None


def row(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The flat row of one de-identified resource (SCHEMA's columns)."""
    from_org, to_org = _organisations(resource)
    quantity = resource.get("valueQuantity") or {}
    return {
        "id": str(resource.get("id", "")),
        "resource_type": str(resource.get("resourceType", "")),
        "month": month_of(resource),
        "patient": _patient(resource),
        "status": resource.get("status") if isinstance(resource.get("status"), str) else None,
        "category": _first_code(resource.get("category")) or _first_code(resource.get("serviceType")),
        "code": _first_code(resource.get("code")) or _first_code(resource.get("type")),
        "from_org": from_org,
        "to_org": to_org,
        "value": float(quantity["value"]) if isinstance(quantity.get("value"), int | float) else None,
        "systolic": _component(resource, _SYSTOLIC),
        "diastolic": _component(resource, _DIASTOLIC),
        "resource": json.dumps(resource, separators=(",", ":"), ensure_ascii=False),
    }


def table(resources: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows of many resources as one Arrow table in SCHEMA."""
    return pa.Table.from_pylist([row(r) for r in resources], schema=SCHEMA)


def ndjson_resources(data: bytes) -> list[dict[str, Any]]:
    """The resources of an NDJSON file (blank lines skipped)."""
    return [json.loads(line) for line in data.splitlines() if line.strip()]
