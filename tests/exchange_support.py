"""What the exchange's integration tests share: its audit bucket, its callers, FHIR documents."""

from __future__ import annotations

import base64
import copy
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from minio import Minio, MinioAdmin
from minio.commonconfig import COMPLIANCE
from minio.credentials.providers import StaticProvider
from minio.objectlockconfig import DAYS, ObjectLockConfig

from medcloud_cli.localcluster.cluster import MinioInfo

DATA = Path(__file__).resolve().parent / "data" / "exchange"
CATEGORY_SYSTEM = "https://medcloud.io/fhir/CodeSystem/sharing-category"
RESIDENT_ID = "urn:oid:2.16.156.10011.1.2"
INSURANCE_CARD = "urn:medcloud:insurance-card:riverton-province"
CLIENT_ROLE = "medcloud-exchange-client"
RBAC = "rbac.authorization.k8s.io"
Json = dict[str, Any]


@dataclass(frozen=True)
class AuditBucket:
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)


def make_audit_bucket(minio: MinioInfo, name: str) -> AuditBucket:
    """The object-locked, versioned audit bucket (COMPLIANCE, 1 day) and a user that may put, get and list only."""
    root = Minio(minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=minio.secure)
    root.make_bucket(bucket_name=name, object_lock=True)
    root.set_object_lock_config(name, ObjectLockConfig(COMPLIANCE, 1, DAYS))
    admin = MinioAdmin(
        endpoint=minio.endpoint, credentials=StaticProvider(minio.access_key, minio.secret_key), secure=minio.secure
    )
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject"], "Resource": [f"arn:aws:s3:::{name}/*"]},
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                "Resource": [f"arn:aws:s3:::{name}"],
            },
        ],
    }
    user, secret = f"{name}-writer", secrets.token_urlsafe(24)
    admin.policy_add(f"{name}-append", policy=policy)
    admin.user_add(user, secret)
    admin.attach_policy([f"{name}-append"], user=user)
    return AuditBucket(name, user, secret)


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
