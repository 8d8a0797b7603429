"""AuditEvents shaped as IHE Basic Audit Log Patterns (BALP), and the object-locked bucket they go to.

Builders are pure. :class:`AuditStore` only puts and reads: the exchange's audit
user has no delete permission, and the bucket's COMPLIANCE retention refuses
deleting or overwriting a version even to MinIO's root. A request whose audit
record cannot be written fails (the caller gets 503, no data).
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from minio import Minio

from medcloud_exchange.resources import ORGANIZATION, PATIENT, PURPOSE_SYSTEM

DCM = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
IHE_EVENT = "urn:ihe:event-type-code"
BALP_AUTHZ = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
SECURITY_ROLE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
USERNAME_SYSTEM = "https://kubernetes.io/serviceaccount"


class Interaction(StrEnum):
    """The RESTful interaction audited, with its BALP action code and IHE transaction."""

    SEARCH = "search-type"
    READ = "read"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    OPERATION = "operation"


_ACTION = {
    Interaction.SEARCH: "E",
    Interaction.READ: "R",
    Interaction.CREATE: "C",
    Interaction.UPDATE: "U",
    Interaction.DELETE: "D",
    Interaction.OPERATION: "E",
}
_TRANSACTIONS = {
    "ITI-67": "Find Document References",
    "ITI-68": "Retrieve Document",
    "ITI-105": "Simplified Publish",
    "ITI-65": "Provide Document Bundle",
    "ITI-66": "Find Document Lists",
    "ITI-78": "Mobile Patient Demographics Query",
}


@dataclass(frozen=True)
class Requester:
    """Who asked: the calling service account, the hospital it acts for, the practitioner and the purpose."""

    username: str
    hospital: str
    practitioner: str
    purpose: str
    address: str | None = None
    break_glass_reason: str | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _purpose(purpose: str) -> list[dict[str, Any]]:
    """The stated purpose of use; none when the caller stated none (a refused request)."""
    return [{"coding": [{"system": PURPOSE_SYSTEM, "code": purpose}]}] if purpose else []


def _agents(requester: Requester, exchange: str, *, authorizer: bool) -> list[dict[str, Any]]:
    client: dict[str, Any] = {
        "type": {"coding": [{"system": DCM, "code": "110150" if authorizer else "110153"}]},
        "who": {"identifier": {"system": USERNAME_SYSTEM, "value": requester.username}},
        "requestor": False,
    }
    if requester.address:
        client["network"] = {"address": requester.address, "type": "2"}
    user: dict[str, Any] = {
        "type": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]},
        "who": {"display": requester.practitioner or "(not stated)"},
        "requestor": True,
    }
    if requester.purpose:
        user["purposeOfUse"] = _purpose(requester.purpose)
    org = {
        "type": {"coding": [{"system": ROLE_CLASS, "code": "PROV"}]},
        "who": {"reference": f"{ORGANIZATION}{requester.hospital}"} if requester.hospital else {"display": "(none)"},
        "requestor": False,
    }
    server = {
        "type": (
            {"coding": [{"system": SECURITY_ROLE, "code": "authserver"}]}
            if authorizer
            else {"coding": [{"system": DCM, "code": "110152"}]}
        ),
        "who": {"display": exchange},
        "requestor": False,
    }
    return [client, user, org, server]


def _patient_entity(patient: uuid.UUID) -> dict[str, Any]:
    return {
        "what": {"reference": f"{PATIENT}{patient}"},
        "type": {"system": ENTITY_TYPE, "code": "1"},
        "role": {"system": OBJECT_ROLE, "code": "1"},
    }


def _source(exchange: str) -> dict[str, Any]:
    return {"site": exchange, "observer": {"display": exchange}}


def _outcome(ok: bool) -> str:
    return "0" if ok else "4"


def rest_event(
    interaction: Interaction,
    transaction: str | None,
    requester: Requester,
    exchange: str,
    *,
    ok: bool,
    description: str,
    patient: uuid.UUID | None,
    objects: Iterable[str] = (),
    query: str | None = None,
) -> dict[str, Any]:
    """A BALP RESTful event (PatientQuery / PatientRead / Create) for one request."""
    subtype = [{"system": RESTFUL, "code": interaction.value}]
    if transaction:
        subtype.append({"system": IHE_EVENT, "code": transaction, "display": _TRANSACTIONS.get(transaction, "")})
    entities: list[dict[str, Any]] = []
    if patient is not None:
        entities.append(_patient_entity(patient))
    for reference in objects:
        entities.append(
            {
                "what": {"reference": reference},
                "type": {"system": ENTITY_TYPE, "code": "2"},
                "role": {"system": OBJECT_ROLE, "code": "4"},
            }
        )
    if query is not None:
        entities.append(
            {
                "type": {"system": ENTITY_TYPE, "code": "2"},
                "role": {"system": OBJECT_ROLE, "code": "24"},
                "query": base64.b64encode(query.encode()).decode(),
            }
        )
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": {"system": AUDIT_TYPE, "code": "rest"},
        "subtype": subtype,
        "action": _ACTION[interaction],
        "recorded": _now(),
        "outcome": _outcome(ok),
        "outcomeDesc": description,
        **({"purposeOfEvent": _purpose(requester.purpose)} if requester.purpose else {}),
        "agent": _agents(requester, exchange, authorizer=False),
        "source": _source(exchange),
        "entity": entities,
    }


def decision_event(
    requester: Requester,
    exchange: str,
    *,
    permit: bool,
    description: str,
    patient: uuid.UUID,
    consents: Iterable[str],
    categories: Iterable[str],
) -> dict[str, Any]:
    """BALP AuthZconsent: the consent decision, permit (outcome 0) or deny (4), and what it rested on."""
    entities = [_patient_entity(patient)]
    entities += [
        {"what": {"reference": f"Consent/{c}"}, "type": {"system": ENTITY_TYPE, "code": "2"}} for c in consents
    ]
    detail = [{"type": "categories", "valueString": ",".join(sorted(categories)) or "-"}]
    if requester.break_glass_reason:
        detail.append({"type": "break-glass-reason", "valueString": requester.break_glass_reason})
    entities[0]["detail"] = detail
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": {"system": DCM, "code": "110113", "display": "Security Alert"},
        "subtype": [{"system": BALP_AUTHZ, "code": "AuthZ-Consent"}],
        "action": "E",
        "recorded": _now(),
        "outcome": _outcome(permit),
        "outcomeDesc": description,
        "purposeOfEvent": _purpose(requester.purpose),
        "agent": _agents(requester, exchange, authorizer=True),
        "source": _source(exchange),
        "entity": entities,
    }


def patient_of(event: dict[str, Any]) -> str | None:
    for entity in event.get("entity") or []:
        reference = (entity.get("what") or {}).get("reference") or ""
        if reference.startswith(PATIENT) and (entity.get("role") or {}).get("code") == "1":
            return str(reference.removeprefix(PATIENT))
    return None


class AuditStore:
    """Puts AuditEvents into the locked bucket (one object each) and reads a patient's back."""

    def __init__(self, minio: Minio, bucket: str) -> None:
        self._minio = minio
        self._bucket = bucket

    @property
    def bucket(self) -> str:
        return self._bucket

    def reachable(self) -> bool:
        """The bucket answers (raises when MinIO does not)."""
        return bool(self._minio.bucket_exists(self._bucket))

    @staticmethod
    def object_name(event: dict[str, Any]) -> str:
        patient = patient_of(event)
        folder = f"patient/{patient}" if patient else "system"
        return f"{folder}/{event['recorded']}-{event['id']}.json"

    def write(self, event: dict[str, Any]) -> str:
        """Store one event; returns its object name. Raises on any failure: the caller must not answer then."""
        body = json.dumps(event, separators=(",", ":")).encode()
        name = self.object_name(event)
        self._minio.put_object(self._bucket, name, io.BytesIO(body), len(body), content_type="application/fhir+json")
        return name

    def for_patient(self, patient: uuid.UUID, limit: int) -> list[dict[str, Any]]:
        """The patient's AuditEvents, newest first, at most ``limit``."""
        names = sorted(
            (o.object_name for o in self._minio.list_objects(self._bucket, prefix=f"patient/{patient}/")),
            reverse=True,
        )[:limit]
        events = []
        for name in names:
            response = self._minio.get_object(self._bucket, name)
            try:
                events.append(json.loads(response.read()))
            finally:
                response.close()
                response.release_conn()
        return events
