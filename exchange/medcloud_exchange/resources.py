"""FHIR R4 in and out: what a publish or a Consent must carry, and the resources the exchange answers with.

Models come from ``fhir.resources.R4B``: R4B changed none of the resources used
here (DocumentReference, Consent, AuditEvent, Bundle, CapabilityStatement,
OperationOutcome) from R4 4.0.1. The models check structure and types, not
terminology, so the codes the exchange relies on are checked here.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from medcloud.models.consortium import ConsortiumSpec
from medcloud_exchange.decision import CATEGORIES, ConsentStatus, ConsentTerms, Purpose
from medcloud_exchange.outcomes import FhirError, invalid, unprocessable

CATEGORY_SYSTEM = "https://medcloud.io/fhir/CodeSystem/sharing-category"
RESIDENT_ID_SYSTEM = "urn:oid:2.16.156.10011.1.2"
INSURANCE_CARD_SYSTEM_PREFIX = "urn:medcloud:insurance-card:"
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
PATIENT_PRIVACY = "patient-privacy"
ORGANIZATION = "Organization/"
PATIENT = "Patient/"
DOCUMENT_STATUSES = ("current", "superseded", "entered-in-error")
MAX_IDENTIFIERS = 8


def validated(model: type[Any], body: Mapping[str, Any], kind: str) -> Any:
    if body.get("resourceType") != kind:
        raise unprocessable(f"expected a {kind}, got resourceType {body.get('resourceType')!r}")
    try:
        return model.model_validate(dict(body))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise unprocessable(f"not a valid FHIR R4 {kind}: {where}: {first.get('msg')}") from None
    except (TypeError, ValueError) as exc:
        raise unprocessable(f"not a valid FHIR R4 {kind}: {exc}") from None


# The workflows import it under its first name.
_validated = validated


def _aware(value: date | datetime) -> datetime:
    """A FHIR date or dateTime as an aware instant: a bare date is its first moment, a naive time UTC."""
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- patients


Identifier = tuple[str, str]


def _identifier(item: Any) -> Identifier:
    system = (item.system or "").strip() if item is not None else ""
    value = (item.value or "").strip() if item is not None else ""
    if not system or not value:
        raise unprocessable("a patient identifier needs a system and a value")
    return system, value


def parse_patient_token(token: str) -> Identifier:
    """``system|value`` of a ``patient.identifier`` search parameter."""
    system, sep, value = token.partition("|")
    if not sep or not system.strip() or not value.strip():
        raise invalid("patient.identifier must be system|value")
    return system.strip(), value.strip()


def patient_id_of(reference: str) -> uuid.UUID:
    """The exchange patient of ``Patient/<id>`` (or a bare id)."""
    raw = reference.removeprefix(PATIENT)
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise invalid(f"{reference!r} is not a patient of this exchange (Patient/<id>)") from None


# --------------------------------------------------------------------------- publish (ITI-105)


@dataclass(frozen=True)
class Publication:
    """A DocumentReference to publish, checked: who it is about, what it is, and its content."""

    identifiers: tuple[Identifier, ...]
    patient: uuid.UUID | None
    category: str
    type_system: str
    type_code: str
    date: datetime
    content_type: str
    content: bytes
    metadata: dict[str, Any]
    # The Patient the publisher sent (contained, or an ITI-65 Bundle entry): demographics, kept encrypted only.
    patient_resource: dict[str, Any] | None = None


def _category(concepts: list[Any] | None) -> str:
    found = {
        coding.code
        for concept in concepts or []
        for coding in concept.coding or []
        if coding.system == CATEGORY_SYSTEM and coding.code
    }
    if len(found) != 1:
        raise unprocessable(
            f"DocumentReference.category needs exactly one coding of {CATEGORY_SYSTEM} "
            f"({', '.join(CATEGORIES)}), found {sorted(found) or 'none'}"
        )
    (category,) = found
    if category not in CATEGORIES:
        raise unprocessable(f"category {category!r} is not a consortium category ({', '.join(CATEGORIES)})")
    return str(category)


# A subject reference resolved to a Patient the publisher sent alongside (an ITI-65 Bundle entry).
PatientResolver = Callable[[str], Mapping[str, Any] | None]


def _patient_identifiers(patient: Any, where: str) -> tuple[Identifier, ...]:
    if not patient.identifier:
        raise unprocessable(f"{where} must be a Patient with identifiers (system and value)")
    identifiers = tuple(dict.fromkeys(_identifier(i) for i in patient.identifier))
    if len(identifiers) > MAX_IDENTIFIERS:
        raise unprocessable(f"a patient may carry at most {MAX_IDENTIFIERS} identifiers")
    return identifiers


def parse_patient(body: Mapping[str, Any], where: str) -> tuple[tuple[Identifier, ...], dict[str, Any]]:
    """A Patient the publisher sends: its identifiers (for the blind index) and the resource (kept encrypted)."""
    patient = validated(Patient, body, "Patient")
    return _patient_identifiers(patient, where), patient.model_dump(mode="json", by_alias=True, exclude_none=True)


_Subject = tuple[tuple[Identifier, ...], uuid.UUID | None, dict[str, Any] | None]


def _subject(doc: Any, resolve: PatientResolver | None) -> _Subject:
    subject = doc.subject
    if subject is None:
        raise unprocessable("DocumentReference.subject must name the patient")
    if subject.identifier is not None:
        return (_identifier(subject.identifier),), None, None
    reference = subject.reference or ""
    if reference.startswith("#"):
        patient = next(
            (c for c in doc.contained or [] if c.get_resource_type() == "Patient" and c.id == reference[1:]), None
        )
        if patient is None:
            raise unprocessable(f"subject {reference} must be a contained Patient with identifiers")
        identifiers = _patient_identifiers(patient, f"subject {reference}")
        return identifiers, None, patient.model_dump(mode="json", by_alias=True, exclude_none=True)
    sent = resolve(reference) if resolve is not None and reference else None
    if sent is not None:
        identifiers, resource = parse_patient(sent, f"subject {reference}")
        return identifiers, None, resource
    if reference.startswith(PATIENT):
        try:
            return (), uuid.UUID(reference.removeprefix(PATIENT)), None
        except ValueError:
            raise unprocessable(f"{reference} is not a patient of this exchange") from None
    raise unprocessable(
        "DocumentReference.subject needs an identifier, Patient/<id>, a contained Patient or a Patient of the Bundle"
    )


def parse_publication(body: Mapping[str, Any], max_bytes: int, resolve: PatientResolver | None = None) -> Publication:
    doc = validated(DocumentReference, body, "DocumentReference")
    if doc.status not in DOCUMENT_STATUSES:
        raise unprocessable(f"DocumentReference.status must be one of {', '.join(DOCUMENT_STATUSES)}")
    if not doc.content or len(doc.content) != 1:
        raise unprocessable("a simplified publish carries exactly one DocumentReference.content")
    attachment = doc.content[0].attachment
    if attachment is None or attachment.data is None or not attachment.contentType:
        raise unprocessable("content.attachment needs contentType and data (the document, base64)")
    content_type = str(attachment.contentType)
    if not content_type.isascii() or not content_type.isprintable():
        raise unprocessable("content.attachment.contentType must be printable ASCII")
    data = bytes(attachment.data)
    if len(data) > max_bytes:
        raise FhirError(413, "too-costly", f"the document is {len(data)} bytes; at most {max_bytes} are accepted")
    codings = [c for c in (doc.type.coding or [] if doc.type else []) if c.system and c.code]
    if not codings:
        raise unprocessable("DocumentReference.type needs a coding with system and code (e.g. LOINC 18842-5)")
    if doc.date is None:
        raise unprocessable("DocumentReference.date is required")
    identifiers, patient, patient_resource = _subject(doc, resolve)
    metadata = doc.model_dump(mode="json", by_alias=True, exclude_none=True)
    # The content goes into its own record; the metadata keeps a pointer, not a second copy.
    metadata["content"][0]["attachment"].pop("data", None)
    metadata["content"][0]["attachment"]["size"] = len(data)
    return Publication(
        identifiers=identifiers,
        patient=patient,
        category=_category(doc.category),
        type_system=str(codings[0].system),
        type_code=str(codings[0].code),
        date=_aware(doc.date),
        content_type=content_type,
        content=data,
        metadata=metadata,
        patient_resource=patient_resource,
    )


def document_out(
    metadata: Mapping[str, Any], document_id: uuid.UUID, patient: uuid.UUID, publisher: str, base: str
) -> dict[str, Any]:
    """The DocumentReference as a reader gets it: the exchange's ids and where to retrieve the content."""
    out = dict(metadata)
    out["id"] = str(document_id)
    out["meta"] = {**(out.get("meta") or {}), "versionId": "1"}
    subject = dict(out.get("subject") or {})
    subject["reference"] = f"{PATIENT}{patient}"
    out["subject"] = subject
    out["custodian"] = {"reference": f"{ORGANIZATION}{publisher}"}
    content = [dict(c) for c in out.get("content") or []]
    if content:
        attachment = dict(content[0].get("attachment") or {})
        attachment["url"] = f"{base}/Binary/{document_id}"
        content[0] = {**content[0], "attachment": attachment}
    out["content"] = content
    return out


# --------------------------------------------------------------------------- consent


@dataclass(frozen=True)
class ConsentInput:
    identifiers: tuple[Identifier, ...]
    patient: uuid.UUID | None
    terms: ConsentTerms


def _codes(codings: list[Any] | None, system: str, allowed: tuple[str, ...], what: str) -> frozenset[str]:
    out = set()
    for coding in codings or []:
        if coding.system != system or coding.code not in allowed:
            raise unprocessable(f"{what} must be codes of {system}: {', '.join(allowed)}")
        out.add(str(coding.code))
    return frozenset(out)


def parse_consent(body: Mapping[str, Any], spec: ConsortiumSpec, consent_id: str) -> ConsentInput:
    consent = validated(Consent, body, "Consent")
    try:
        status = ConsentStatus(consent.status)
    except ValueError:
        raise unprocessable(f"Consent.status must be one of {', '.join(s.value for s in ConsentStatus)}") from None
    scope = [c for c in (consent.scope.coding or [] if consent.scope else []) if c.system == CONSENT_SCOPE_SYSTEM]
    if not scope or scope[0].code != PATIENT_PRIVACY:
        raise unprocessable(f"Consent.scope must be {CONSENT_SCOPE_SYSTEM}|{PATIENT_PRIVACY}")
    provision = consent.provision
    if provision is None or provision.type not in ("permit", "deny"):
        raise unprocessable("Consent.provision.type must be permit or deny")
    if provision.provision:
        raise unprocessable("nested Consent.provision.provision is not supported; record one Consent per rule")
    actors = set()
    for actor in provision.actor or []:
        reference = (actor.reference.reference or "") if actor.reference else ""
        hospital = reference.removeprefix(ORGANIZATION)
        if not reference.startswith(ORGANIZATION) or hospital not in spec.members:
            raise unprocessable(f"provision.actor {reference!r} must be Organization/<member hospital>")
        actors.add(hospital)
    purposes = _codes(provision.purpose, PURPOSE_SYSTEM, tuple(p.value for p in Purpose), "provision.purpose")
    categories = _codes(provision.class_fhir, CATEGORY_SYSTEM, CATEGORIES, "provision.class")
    period = provision.period
    start = _aware(period.start) if period and period.start else None
    end = _aware(period.end) if period and period.end else None
    if start and end and end < start:
        raise unprocessable("provision.period ends before it starts")
    patient_ref = consent.patient
    if patient_ref is None:
        raise unprocessable("Consent.patient must name the patient")
    identifiers: tuple[Identifier, ...] = ()
    patient: uuid.UUID | None = None
    if patient_ref.identifier is not None:
        identifiers = (_identifier(patient_ref.identifier),)
    elif (patient_ref.reference or "").startswith(PATIENT):
        try:
            patient = uuid.UUID(patient_ref.reference.removeprefix(PATIENT))
        except ValueError:
            raise unprocessable(f"{patient_ref.reference} is not a patient of this exchange") from None
    else:
        raise unprocessable("Consent.patient needs an identifier or Patient/<id>")
    terms = ConsentTerms(
        id=consent_id,
        status=status,
        permit=provision.type == "permit",
        actors=frozenset(actors),
        purposes=purposes,
        categories=categories,
        start=start,
        end=end,
    )
    return ConsentInput(identifiers=identifiers, patient=patient, terms=terms)


def consent_out(terms: ConsentTerms, patient: uuid.UUID, version: int, recorded_by: str) -> dict[str, Any]:
    """The Consent as stored, rebuilt from its row (the identifier the caller sent is not kept)."""
    provision: dict[str, Any] = {"type": "permit" if terms.permit else "deny"}
    period = {
        k: v.astimezone(UTC).isoformat().replace("+00:00", "Z")
        for k, v in (("start", terms.start), ("end", terms.end))
        if v is not None
    }
    if period:
        provision["period"] = period
    if terms.actors:
        provision["actor"] = [
            {
                "role": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]
                },
                "reference": {"reference": f"{ORGANIZATION}{h}"},
            }
            for h in sorted(terms.actors)
        ]
    if terms.purposes:
        provision["purpose"] = [{"system": PURPOSE_SYSTEM, "code": p} for p in sorted(terms.purposes)]
    if terms.categories:
        provision["class"] = [{"system": CATEGORY_SYSTEM, "code": c} for c in sorted(terms.categories)]
    return {
        "resourceType": "Consent",
        "id": terms.id,
        "meta": {"versionId": str(version)},
        "status": terms.status.value,
        "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": PATIENT_PRIVACY}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"{PATIENT}{patient}"},
        "organization": [{"reference": f"{ORGANIZATION}{recorded_by}"}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision,
    }


def searchset(entries: list[dict[str, Any]], total: int, self_url: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": "self", "url": self_url}],
        "entry": [
            {"fullUrl": f"{e['resourceType']}/{e['id']}", "resource": e, "search": {"mode": "match"}} for e in entries
        ],
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Elements of a publisher's Patient that point into its own system, meaningless (or dangling) elsewhere.
_LOCAL_ELEMENTS = ("id", "meta", "text", "contained", "link", "generalPractitioner", "managingOrganization")


def patient_out(patient: uuid.UUID, sent: list[Mapping[str, Any]], asked: tuple[Identifier, ...]) -> dict[str, Any]:
    """The consortium's Patient: the exchange's id, the newest demographics a visible member sent, every
    identifier visible members sent (and the one asked for, which the reader already knows)."""
    out: dict[str, Any] = {"resourceType": "Patient"}
    if sent:
        out.update({k: v for k, v in sent[0].items() if k not in _LOCAL_ELEMENTS})
    identifiers: dict[Identifier, dict[str, Any]] = {}
    for resource in sent:
        for item in resource.get("identifier") or []:
            identifiers.setdefault((item.get("system", ""), item.get("value", "")), item)
    for system, value in asked:
        identifiers.setdefault((system, value), {"system": system, "value": value})
    out["id"] = str(patient)
    if identifiers:
        out["identifier"] = list(identifiers.values())
    return out
