"""Pure builders of a RecordStore: the bucket's lock and policy, rotation, usage, status.

Nothing here talks to Kubernetes or MinIO. The handler
(``handlers/recordstore.py``) reads the world, calls these functions and
writes what they return; ``storage.py`` carries out the MinIO side. The
store's names and its credentials Secret are the tenancy contract
(:mod:`medcloud.tenancy.store`, :mod:`medcloud.tenancy.credentials`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from medcloud.models import (
    ConditionStatus,
    KeyRotation,
    Phase,
    Reason,
    RecordStoreCondition,
    RecordStoreStatus,
    RecordStoreUsage,
    Retention,
    SecretReference,
    duration_days,
)
from medcloud.models.common import parse_quantity
from medcloud.models.conditions import set_condition
from medcloud_operator.status import Check, summarise

PARTS = (
    RecordStoreCondition.STORAGE_AVAILABLE,
    RecordStoreCondition.CREDENTIALS_READY,
    RecordStoreCondition.KEYS_READY,
)


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
    checks: Mapping[RecordStoreCondition, Check],
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
        provisioning=Check(ConditionStatus.FALSE, Reason.PROVISIONING, "Provisioning the record store."),
        ready=Check(
            ConditionStatus.TRUE,
            Reason.RECONCILED,
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
        RecordStoreCondition.READY,
        ConditionStatus.FALSE,
        Reason.DELETING,
        message,
        generation,
        now,
    )
    return previous.model_copy(update={"phase": Phase.TERMINATING, "conditions": conditions})
