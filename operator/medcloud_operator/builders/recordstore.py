"""Pure builders of a RecordStore: names, the bucket's lock and policy, the credentials Secret, rotation, status.

Nothing here talks to Kubernetes or MinIO. The handler
(``handlers/recordstore.py``) reads the world, calls these functions and
writes what they return; ``storage.py`` carries out the MinIO side.

Naming: one RecordStore is one bucket, one MinIO user and one policy, all
derived from ``(hospital, store)`` only, so a RecordStore deleted with
``Retain`` and created again under the same name finds its bucket and keys
again. Every derived name ends in a hash of the pair: ``hospital "a-b", store
"c"`` and ``hospital "a", store "b-c"`` read alike once joined by a dash, and
without the hash two tenants could be handed the same bucket.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from medcloud.models import (
    ConditionStatus,
    KeyRotation,
    Phase,
    RecordStoreStatus,
    RecordStoreUsage,
    Retention,
    SecretReference,
    duration_days,
)
from medcloud.models.common import HOSPITAL_NAMESPACE_PREFIX, parse_quantity
from medcloud_operator import OPERATOR_NAME, labels
from medcloud_operator.conditions import set_condition
from medcloud_operator.kube import Manifest
from medcloud_operator.status import Check, summarise

COMPONENT = "recordstore"
"""``app.kubernetes.io/component`` of the objects a RecordStore owns."""
STORE_LABEL = "medcloud.io/recordstore"
STORE_ANNOTATION = "medcloud.io/recordstore"
"""Store names are DNS subdomains (up to 253 characters); labels hold 63, so the full name is an annotation."""

BUCKET_MAX = 63
HASH_HEX = 16
# S3 reserves these prefixes (AWS rejects them; MinIO follows S3's rules).
_RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_SECRET_NAME_MAX = 253
CREDENTIALS_SUFFIX = "-credentials"

# Tags on the bucket naming its owner: a bucket tagged for another store is never adopted.
TAG_HOSPITAL = "medcloud.io/hospital"
TAG_NAMESPACE = "medcloud.io/namespace"
TAG_STORE = "medcloud.io/recordstore"


class InvalidStoreError(ValueError):
    """The RecordStore cannot be realised where or as it is written (not a hospital namespace, ...)."""


class StoreCondition(StrEnum):
    """The conditions a RecordStore reports; Ready summarises the other three."""

    READY = "Ready"
    STORAGE_AVAILABLE = "StorageAvailable"
    """The object store answers and the bucket has versioning, object lock, quota and its access policy."""
    CREDENTIALS_READY = "CredentialsReady"
    """The store's own MinIO user works and its credentials Secret is in the hospital namespace."""
    KEYS_READY = "KeysReady"
    """The data-key ring exists in the operator namespace, wrapped by the hospital's current KEK."""


PARTS = (StoreCondition.STORAGE_AVAILABLE, StoreCondition.CREDENTIALS_READY, StoreCondition.KEYS_READY)


class StoreReason(StrEnum):
    """Why a RecordStore condition is what it is."""

    RECONCILED = "Reconciled"
    PROVISIONING = "Provisioning"
    INVALID_SPEC = "InvalidSpec"
    """The spec or the store's namespace cannot be realised; edit or move the RecordStore."""
    STORAGE_UNAVAILABLE = "StorageUnavailable"
    """MinIO did not answer or failed (network error, 5xx); the operator retries with backoff."""
    STORAGE_NOT_CONFIGURED = "StorageNotConfigured"
    """The operator has no MinIO endpoint or admin credentials (MEDCLOUD_MINIO_*)."""
    STORAGE_REJECTED = "StorageRejected"
    """MinIO refused a request (4xx): the operator's MinIO credentials lack a permission, or a value is invalid."""
    BUCKET_CONFLICT = "BucketConflict"
    """The bucket exists but belongs to another store or lacks object lock; it is never taken over."""
    SECRET_CONFLICT = "SecretConflict"  # noqa: S105 - a condition reason, not a secret
    """A Secret of the credentials' name exists and was not written by the operator; it is never overwritten."""
    APPLY_FAILED = "ApplyFailed"
    """The API server refused or failed a write; the operator retries."""
    FORBIDDEN = "Forbidden"
    """The operator's RBAC lacks a permission (deploy/recordstore-operator-rbac.yaml)."""
    HOSPITAL_NOT_READY = "HospitalNotReady"
    """The Hospital of the namespace does not exist or has no KEK yet."""
    KEK_MISSING = "KEKMissing"
    """The hospital's KEK Secret, or the KEK version that wraps the key ring, is gone: restore it from backup."""
    KEK_INVALID = "KEKInvalid"
    """The KEK Secret is unreadable, or older than the KEK that wrapped the key ring."""
    KEYS_MISSING = "KeysMissing"
    """The key ring Secret is gone although keys were issued: restore it from backup (never regenerated)."""
    KEYS_INVALID = "KeysInvalid"
    """The key ring Secret does not parse or its keys do not unwrap under the KEK: restore it from backup."""
    KEYS_SHREDDED = "KeysShredded"
    """The store's keys were crypto-shredded; a store of this name cannot get keys again."""
    DELETING = "Deleting"


# --------------------------------------------------------------------------- names


def hospital_of_namespace(namespace: str) -> str:
    """The Hospital whose tenant namespace this is (``hospital-<name>``)."""
    if not namespace.startswith(HOSPITAL_NAMESPACE_PREFIX) or len(namespace) == len(HOSPITAL_NAMESPACE_PREFIX):
        raise InvalidStoreError(
            f"RecordStores live in a hospital's namespace ({HOSPITAL_NAMESPACE_PREFIX}<hospital>), not in {namespace}"
        )
    return namespace[len(HOSPITAL_NAMESPACE_PREFIX) :]


def _digest(hospital: str, store: str) -> str:
    # "/" appears in neither a hospital name (DNS label) nor a store name (DNS
    # subdomain), so distinct pairs always hash distinct strings.
    return hashlib.sha256(f"{hospital}/{store}".encode()).hexdigest()


def bucket_name(hospital: str, store: str) -> str:
    """``<hospital>-<store>-<16 hex>``, shortened to S3's 63 characters; dots become dashes.

    Dots are legal in bucket names but break virtual-host TLS certificates.
    The hash keeps names distinct however the readable part is shortened.
    """
    suffix = _digest(hospital, store)[:HASH_HEX]
    readable = re.sub(r"[^a-z0-9-]", "-", f"{hospital}-{store}".lower())
    if readable.startswith(_RESERVED_BUCKET_PREFIXES):
        readable = f"mc-{readable}"
    readable = re.sub(r"-{2,}", "-", readable)[: BUCKET_MAX - HASH_HEX - 1].strip("-")
    return f"{readable}-{suffix}"


def user_name(bucket: str) -> str:
    """The store's MinIO user (access key): the bucket's name, so each user reads as the bucket it may use."""
    return bucket


def policy_name(bucket: str) -> str:
    return f"recordstore-{bucket}"


def credentials_secret_name(store: str) -> str:
    """``<store>-credentials``; a very long store name is shortened and given a hash."""
    name = f"{store}{CREDENTIALS_SUFFIX}"
    if len(name) <= _SECRET_NAME_MAX:
        return name
    short = hashlib.sha256(store.encode()).hexdigest()[:HASH_HEX]
    keep = _SECRET_NAME_MAX - len(CREDENTIALS_SUFFIX) - HASH_HEX - 1
    return f"{store[:keep].rstrip('.-')}-{short}{CREDENTIALS_SUFFIX}"


@dataclass(frozen=True)
class StoreNames:
    """Everything derived from where a RecordStore lives and what it is called."""

    namespace: str
    store: str
    hospital: str
    bucket: str
    user: str
    policy: str
    secret: str

    @classmethod
    def of(cls, namespace: str, store: str) -> StoreNames:
        hospital = hospital_of_namespace(namespace)
        bucket = bucket_name(hospital, store)
        return cls(
            namespace=namespace,
            store=store,
            hospital=hospital,
            bucket=bucket,
            user=user_name(bucket),
            policy=policy_name(bucket),
            secret=credentials_secret_name(store),
        )

    @property
    def key(self) -> str:
        """Lock key: never equal to a Hospital's (those have no slash)."""
        return f"RecordStore/{self.namespace}/{self.store}"

    def owner_tags(self) -> dict[str, str]:
        return {TAG_HOSPITAL: self.hospital, TAG_NAMESPACE: self.namespace, TAG_STORE: self.store}


def store_labels(hospital: str) -> dict[str, str]:
    return {
        labels.MANAGED_BY: OPERATOR_NAME,
        labels.PART_OF: "medcloud",
        labels.COMPONENT: COMPONENT,
        labels.HOSPITAL: hospital,
    }


# --------------------------------------------------------------------------- the bucket


@dataclass(frozen=True)
class LockRule:
    """S3 default retention: mode and a whole number of days or years, as the bucket's lock configuration says."""

    mode: str
    duration: int
    unit: str  # "Days" or "Years", as the S3 API spells them

    @classmethod
    def of(cls, retention: Retention) -> LockRule:
        # Years stay years: S3 counts them as calendar years, which is what a
        # "keep for 30 years" rule means (365-day years would fall short).
        amount = int(retention.period[:-1])
        unit = "Years" if retention.period.endswith("y") else "Days"
        return cls(mode=str(retention.mode), duration=amount, unit=unit)


def quota_bytes(quota: str) -> int:
    """The bucket's hard quota in bytes (``100Gi`` -> 107374182400)."""
    return int(parse_quantity(quota))


BUCKET_ACTIONS = (
    "s3:GetBucketLocation",
    "s3:GetBucketObjectLockConfiguration",
    "s3:GetBucketVersioning",
    "s3:ListBucket",
    "s3:ListBucketMultipartUploads",
    "s3:ListBucketVersions",
)
OBJECT_ACTIONS = (
    "s3:AbortMultipartUpload",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:GetObject",
    "s3:GetObjectLegalHold",
    "s3:GetObjectRetention",
    "s3:GetObjectTagging",
    "s3:GetObjectVersion",
    "s3:GetObjectVersionTagging",
    "s3:ListMultipartUploadParts",
    "s3:PutObject",
)
# What a tenant must never do even if some other policy allowed it: change
# or lift retention, switch versioning off, or open the bucket up.
DENIED_ACTIONS = (
    "s3:BypassGovernanceRetention",
    "s3:DeleteBucket",
    "s3:DeleteBucketPolicy",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutBucketPolicy",
    "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration",
    "s3:PutObjectLegalHold",
    "s3:PutObjectRetention",
)


def bucket_policy(bucket: str) -> dict[str, Any]:
    """The IAM policy of the store's user: its own bucket and nothing else.

    Deleting an object version is allowed because object lock, not the
    policy, is what protects a version until its retention ends.
    """
    bucket_arn, objects_arn = f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": list(BUCKET_ACTIONS), "Resource": [bucket_arn]},
            {"Effect": "Allow", "Action": list(OBJECT_ACTIONS), "Resource": [objects_arn]},
            {"Effect": "Deny", "Action": list(DENIED_ACTIONS), "Resource": [bucket_arn, objects_arn]},
        ],
    }


def normalized_policy(policy: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """A policy in a form that compares equal however the server ordered or spelled its lists."""

    def as_tuple(value: Any) -> tuple[str, ...]:
        return tuple(sorted([value] if isinstance(value, str) else [str(v) for v in value or []]))

    statements = policy.get("Statement") or []
    return sorted((str(s.get("Effect")), as_tuple(s.get("Action")), as_tuple(s.get("Resource"))) for s in statements)


# --------------------------------------------------------------------------- the credentials Secret


@dataclass(frozen=True)
class Endpoint:
    """Where tenants reach the object store: ``http(s)://host:port``."""

    url: str
    host: str
    port: int
    secure: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint URL: {url!r}")
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        return cls(url=f"{parts.scheme}://{parts.netloc}", host=parts.hostname, port=port, secure=secure)

    @property
    def address(self) -> str:
        """``host:port``, what the minio SDK and most S3 clients take with a separate TLS flag."""
        return f"{self.host}:{self.port}"


SECRET_KEY_FIELD = "COSI_S3_ACCESS_SECRET_KEY"  # noqa: S105 - a key name, not a secret
ACCESS_KEY_FIELD = "COSI_S3_ACCESS_KEY_ID"


def build_credentials_secret(
    names: StoreNames,
    endpoint: Endpoint,
    region: str,
    secret_key: str,
    *,
    ca_pem: str | None = None,
    key_service_url: str | None = None,
) -> Manifest:
    """The credentials Secret in the hospital namespace: COSI (v1alpha2) keys, ObjectBucketClaim keys, MedCloud's own.

    Both conventions so that off-the-shelf consumers (backup tools, database
    operators) take the Secret as it is. COSI publishes a URL, the OBC keys a
    host and port; the MedCloud keys name the store for the record client.
    """
    data = {
        "COSI_PROTOCOL": "S3",
        "COSI_S3_BUCKET_ID": names.bucket,
        "COSI_S3_ENDPOINT": endpoint.url,
        "COSI_S3_REGION": region,
        "COSI_S3_ADDRESSING_STYLE": "path",
        ACCESS_KEY_FIELD: names.user,
        SECRET_KEY_FIELD: secret_key,
        "BUCKET_NAME": names.bucket,
        "BUCKET_HOST": endpoint.host,
        "BUCKET_PORT": str(endpoint.port),
        "BUCKET_REGION": region,
        "AWS_ACCESS_KEY_ID": names.user,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "MEDCLOUD_HOSPITAL": names.hospital,
        "MEDCLOUD_RECORDSTORE": names.store,
        "MEDCLOUD_S3_SECURE": "true" if endpoint.secure else "false",
    }
    if ca_pem:
        data["COSI_CERTIFICATE_AUTHORITY"] = ca_pem
    if key_service_url:
        data["MEDCLOUD_KEY_SERVICE_URL"] = key_service_url
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": names.secret,
            "namespace": names.namespace,
            "labels": store_labels(names.hospital),
            "annotations": {STORE_ANNOTATION: names.store},
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(data.items())},
    }


def secret_is_ours(secret: Manifest, names: StoreNames) -> bool:
    meta = secret.get("metadata") or {}
    return (meta.get("labels") or {}).get(labels.COMPONENT) == COMPONENT and (meta.get("annotations") or {}).get(
        STORE_ANNOTATION
    ) == names.store


def decoded(secret: Manifest, key: str) -> str | None:
    """One value of a Secret in clear, or None when absent or not base64 text."""
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        return None
    try:
        return base64.b64decode(raw, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def secret_differs(desired: Manifest, live: Manifest) -> bool:
    """True when the live Secret's data, type or MedCloud labels are not what the operator wants."""
    if (live.get("data") or {}) != desired["data"] or live.get("type") != desired["type"]:
        return True
    live_meta = live.get("metadata") or {}
    for part in ("labels", "annotations"):
        wanted, have = desired["metadata"].get(part) or {}, live_meta.get(part) or {}
        if any(have.get(k) != v for k, v in wanted.items()):
            return True
    return False


# --------------------------------------------------------------------------- keys


def rotation_reason(
    rotation: KeyRotation, observed_rotate_now: int | None, current_created_at: datetime, now: datetime
) -> str | None:
    """Why the store needs a new data-key version now, or None.

    ``observed_rotate_now`` None means the store never recorded one: the
    first reconcile adopts the spec's counter instead of rotating for it.
    """
    if observed_rotate_now is not None and rotation.rotate_now != observed_rotate_now:
        return f"requested (keyRotation.rotateNow {observed_rotate_now} -> {rotation.rotate_now})"
    due = current_created_at + timedelta(days=duration_days(rotation.period))
    if now >= due:
        return f"scheduled (every {rotation.period}; the current key is from {current_created_at:%Y-%m-%d})"
    return None


# --------------------------------------------------------------------------- usage


@dataclass(frozen=True)
class StoredVersion:
    """One object version as the bucket listing shows it."""

    size: int
    key_version: int | None
    """Data-key version from the record's metadata; None for an object the record client did not write."""
    delete_marker: bool = False


def usage(versions: Iterable[StoredVersion], current_key_version: int | None) -> RecordStoreUsage:
    """Bytes and object versions in the bucket, and how many are encrypted under an older data key.

    Delete markers are not data and are not counted; every stored version
    is, because object lock keeps all of them.
    """
    total = objects = older = 0
    for version in versions:
        if version.delete_marker:
            continue
        objects += 1
        total += version.size
        if current_key_version is not None and version.key_version is not None:
            older += version.key_version < current_key_version
    return RecordStoreUsage(bytes=total, objects=objects, objects_on_older_keys=older)


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class StoreFacts:
    """What one reconcile learnt; None leaves the previous status value in place."""

    bucket: str | None = None
    endpoint: str | None = None
    secret: str | None = None
    retention: Retention | None = None
    key_version: int | None = None
    kek_version: int | None = None
    key_rotated_at: datetime | None = None
    observed_rotate_now: int | None = None
    usage: RecordStoreUsage | None = None


def next_status(
    previous: RecordStoreStatus,
    *,
    generation: int | None,
    checks: Mapping[StoreCondition, Check],
    facts: StoreFacts,
    spec_failed: bool,
    now: datetime,
) -> RecordStoreStatus:
    """The status after a reconcile whose parts came out as ``checks``.

    Parts not in ``checks`` keep their previous condition. Ready is True only
    when all three parts are; otherwise it carries the first failing part's
    reason. The phase is Failed when the spec cannot be realised, Degraded
    when a store that was Ready lost a part, Provisioning before it was ever
    Ready.
    """
    bucket = facts.bucket or previous.bucket
    summary = summarise(
        previous,
        generation=generation,
        checks=checks,
        parts=PARTS,
        spec_failed=spec_failed,
        provisioning=Check(ConditionStatus.FALSE, StoreReason.PROVISIONING, "Provisioning the record store."),
        ready=Check(
            ConditionStatus.TRUE,
            StoreReason.RECONCILED,
            f"Bucket {bucket} is locked and versioned, its credentials are issued and its keys are current.",
        ),
        now=now,
    )
    return RecordStoreStatus(
        phase=summary.phase,
        observed_generation=generation,
        conditions=summary.conditions,
        bucket=bucket,
        endpoint=facts.endpoint or previous.endpoint,
        secret_ref=SecretReference(name=facts.secret) if facts.secret else previous.secret_ref,
        retention=facts.retention or previous.retention,
        key_version=facts.key_version if facts.key_version is not None else previous.key_version,
        kek_version=facts.kek_version if facts.kek_version is not None else previous.kek_version,
        key_rotated_at=facts.key_rotated_at or previous.key_rotated_at,
        observed_rotate_now=(
            facts.observed_rotate_now if facts.observed_rotate_now is not None else previous.observed_rotate_now
        ),
        usage=facts.usage or previous.usage,
    )


def terminating_status(
    previous: RecordStoreStatus, *, generation: int | None, message: str, now: datetime
) -> RecordStoreStatus:
    """The status while the store is being deleted: phase Terminating, Ready False."""
    conditions = set_condition(
        previous.conditions,
        StoreCondition.READY,
        ConditionStatus.FALSE,
        StoreReason.DELETING,
        message,
        generation,
        now,
    )
    return previous.model_copy(update={"phase": Phase.TERMINATING, "conditions": conditions})
