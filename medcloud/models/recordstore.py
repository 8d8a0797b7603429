"""RecordStore: an encrypted, retention-locked bucket of medical records (namespaced)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal, Self

from pydantic import AwareDatetime, Field, model_validator

from medcloud.models.common import (
    PHASE_COLUMN,
    READY_COLUMN,
    ByteQuantity,
    CELRule,
    CRDInfo,
    DNS1123Subdomain,
    Duration,
    MedCloudModel,
    PrinterColumn,
    Resource,
    StatusBase,
    duration_days,
    duration_days_cel,
    empty_default,
    immutable,
    only_grows,
)


class RecordClass(StrEnum):
    """What a store holds; it decides the bucket's layout and who may share it."""

    EMR = "emr"
    IMAGING = "imaging"
    DEVICE_DATA = "device-data"
    DOCUMENTS = "documents"


class RetentionMode(StrEnum):
    """S3 object-lock mode.

    GOVERNANCE: privileged users may shorten or lift retention.
    COMPLIANCE: nobody can, not even the cloud operator, until the period ends.
    """

    GOVERNANCE = "GOVERNANCE"
    COMPLIANCE = "COMPLIANCE"


class DeletionPolicy(StrEnum):
    """What happens to the bucket when the RecordStore is deleted."""

    RETAIN = "Retain"
    SHRED = "Shred"


_COMPLIANCE_STAYS = CELRule(
    rule="oldSelf.mode != 'COMPLIANCE' || self.mode == 'COMPLIANCE'",
    message="retention.mode cannot change from COMPLIANCE to GOVERNANCE: compliance-locked records stay locked",
    reason="FieldValueForbidden",
    field_path=".mode",
)
_COMPLIANCE_NEVER_SHORTER = CELRule(
    rule=(
        f"oldSelf.mode != 'COMPLIANCE' || {duration_days_cel('self.period')} >= {duration_days_cel('oldSelf.period')}"
    ),
    message_expression=(
        "'retention.period cannot be shortened in COMPLIANCE mode (from ' + oldSelf.period + ' to ' "
        "+ self.period + '); a year counts as 365 days'"
    ),
    reason="FieldValueForbidden",
    field_path=".period",
)


class Retention(MedCloudModel):
    """How long every record version is locked against deletion and overwrite.

    The period is a whole number of days (3650d) or years (30y). For
    comparisons a year counts as 365 days, so 30y equals 10950d. In
    COMPLIANCE mode the period can only grow and the mode cannot go back to
    GOVERNANCE.
    """

    mode: RetentionMode = Field(
        default=RetentionMode.COMPLIANCE,
        description=(
            "Object-lock mode: COMPLIANCE (nobody can shorten or lift retention; the default for medical "
            "records) or GOVERNANCE (privileged users can)."
        ),
    )
    period: Duration = Field(
        description=(
            "Retention period: whole days like 3650d or years like 30y (a year counts as 365 days). "
            "In COMPLIANCE mode it can never be shortened."
        ),
    )

    @property
    def days(self) -> int:
        """The period in days, as the CRD's rules count them."""
        return duration_days(self.period)


class KeyRotation(MedCloudModel):
    """When the store moves to a new data-key version; records already stored keep theirs."""

    period: Duration = Field(
        default="90d",
        description="How often the store gets a new data-key version on its own: days like 90d or years like 1y.",
    )
    rotate_now: Annotated[
        int,
        only_grows("keyRotation.rotateNow", "a rotation"),
    ] = Field(
        default=0,
        ge=0,
        description=(
            "On-demand rotation counter: increase it by one to rotate the key now. The operator rotates "
            "whenever it differs from status.observedRotateNow. It can only grow."
        ),
    )


class RecordStoreSpec(MedCloudModel):
    """Desired state of a record store."""

    cel_rules: ClassVar[tuple[CELRule, ...]] = (
        CELRule(
            rule="!(self.deletionPolicy == 'Shred' && self.retention.mode == 'COMPLIANCE')",
            message=(
                "deletionPolicy Shred is not allowed with COMPLIANCE retention: records under compliance "
                "retention must outlive the store; use Retain or GOVERNANCE retention"
            ),
            field_path=".deletionPolicy",
        ),
    )

    record_class: Annotated[
        RecordClass,
        Field(description="What the store holds: emr, imaging, device-data or documents. Immutable."),
        immutable("recordClass", "records already stored were classified under it"),
    ]
    retention: Annotated[
        Retention,
        Field(description="Retention lock on every record version (S3 object lock)."),
        _COMPLIANCE_STAYS,
        _COMPLIANCE_NEVER_SHORTER,
    ]
    quota: ByteQuantity = Field(default="100Gi", description="Maximum size of the bucket, e.g. 500Gi or 2Ti.")
    key_rotation: KeyRotation = Field(
        default_factory=KeyRotation,
        description=(
            "Rotation of the store's data key: a new version for new records; records already stored keep "
            "theirs and stay readable (nothing is re-encrypted)."
        ),
        json_schema_extra=empty_default(),
    )
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.RETAIN,
        description=(
            "What deleting the RecordStore does to its data: Retain keeps the bucket; Shred destroys the "
            "store's keys so the data can never be decrypted (crypto-shredding)."
        ),
    )

    @model_validator(mode="after")
    def _shred_needs_governance(self) -> Self:
        if self.deletion_policy is DeletionPolicy.SHRED and self.retention.mode is RetentionMode.COMPLIANCE:
            raise ValueError("deletionPolicy Shred is not allowed with COMPLIANCE retention")
        return self


class SecretReference(MedCloudModel):
    """A Secret in the same namespace."""

    name: DNS1123Subdomain = Field(description="Name of the Secret.")


class RecordStoreUsage(MedCloudModel):
    """How much the store holds, as last measured by the operator."""

    bytes: int = Field(default=0, ge=0, description="Total size of all object versions in bytes.")
    objects: int = Field(default=0, ge=0, description="Number of object versions.")
    objects_on_older_keys: int = Field(
        default=0,
        ge=0,
        description=(
            "Object versions encrypted under an older data-key version than the current one; they stay "
            "readable, and re-encrypting them is what retires an old version."
        ),
    )


class RecordStoreStatus(StatusBase):
    """Observed state of a record store, written by the operator."""

    bucket: str | None = Field(default=None, description="Name of the bucket on the object store.")
    endpoint: str | None = Field(default=None, description="URL of the S3-compatible endpoint serving the bucket.")
    secret_ref: SecretReference | None = Field(
        default=None, description="Secret with the store's own least-privilege access credentials."
    )
    retention: Retention | None = Field(default=None, description="Retention currently applied to the bucket.")
    key_version: int | None = Field(
        default=None, ge=0, description="Current data-key version of the store: new records are encrypted under it."
    )
    kek_version: int | None = Field(
        default=None, ge=0, description="Version of the hospital's KEK that wraps every data key of the store."
    )
    key_rotated_at: AwareDatetime | None = Field(
        default=None, description="When the current data-key version was created."
    )
    observed_rotate_now: int | None = Field(
        default=None, ge=0, description="Last spec.keyRotation.rotateNow value the operator acted on."
    )
    usage: RecordStoreUsage | None = Field(default=None, description="Size and rotation backlog of the store.")


class RecordStore(Resource):
    """An encrypted medical-record bucket with object lock, its own credentials and envelope encryption."""

    crd: ClassVar[CRDInfo] = CRDInfo(
        plural="recordstores",
        singular="recordstore",
        scope="Namespaced",
        # Not "rs": kubectl resolves that to ReplicaSets first and warns on every
        # `kubectl get rs` in the cluster.
        short_names=("rstore",),
        printer_columns=(
            PrinterColumn("Class", ".spec.recordClass", description="Record class"),
            PrinterColumn("Retention", ".spec.retention.period", description="Retention period"),
            PrinterColumn("Mode", ".spec.retention.mode", description="Retention mode"),
            PrinterColumn("Bucket", ".status.bucket", description="Bucket on the object store"),
            PrinterColumn("Key", ".status.keyVersion", type="integer", description="Current data-key version"),
            PHASE_COLUMN,
            READY_COLUMN,
            PrinterColumn("Quota", ".spec.quota", description="Bucket quota", priority=1),
            PrinterColumn("Policy", ".spec.deletionPolicy", description="Deletion policy", priority=1),
        ),
    )

    kind: Literal["RecordStore"] = Field(default="RecordStore", description="Kind of the object: RecordStore.")
    spec: RecordStoreSpec = Field(description="Desired state of the record store.")
    status: RecordStoreStatus | None = Field(default=None, description="Observed state, written by the operator.")


class RecordStoreCondition(StrEnum):
    """The conditions a RecordStore reports; Ready summarises the other three."""

    READY = "Ready"
    STORAGE_AVAILABLE = "StorageAvailable"
    """The object store answers and the bucket has versioning, object lock, quota and its access policy."""
    CREDENTIALS_READY = "CredentialsReady"
    """The store's own MinIO user works and its credentials Secret is in the hospital namespace."""
    KEYS_READY = "KeysReady"
    """The data-key ring exists in the operator namespace, wrapped by the hospital's current KEK."""


class RecordStoreReason(StrEnum):
    """Reasons only a RecordStore reports (the shared ones are :class:`medcloud.models.conditions.Reason`)."""

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
    HOSPITAL_MISSING = "HospitalMissing"
    """The namespace is named like a hospital's but no such Hospital exists: the store has no KEK to use."""
    HOSPITAL_NOT_READY = "HospitalNotReady"
    """The Hospital of the namespace does not exist or has no KEK yet."""
    KEYS_MISSING = "KeysMissing"
    """The key ring Secret is gone although keys were issued: restore it from backup (never regenerated)."""
    KEYS_INVALID = "KeysInvalid"
    """The key ring Secret does not parse or its keys do not unwrap under the KEK: restore it from backup."""
    KEYS_SHREDDED = "KeysShredded"
    """The store's keys were crypto-shredded; a store of this name cannot get keys again."""
