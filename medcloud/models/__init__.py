"""MedCloud's custom resources (API group medcloud.io, version v1alpha1) as pydantic models.

These models are the single source of truth: ``medcloud crds generate``
turns them into ``crds/*.yaml``.
"""

from __future__ import annotations

from medcloud.models.appinstance import AppInstance, AppInstanceSpec, AppInstanceStatus, CatalogApp, Exposure
from medcloud.models.common import (
    API_VERSION,
    GROUP,
    VERSION,
    Condition,
    ConditionStatus,
    CRDInfo,
    ObjectMeta,
    Phase,
    PrinterColumn,
    Resource,
    ResourceRequirements,
    StatusBase,
    duration_days,
    hospital_namespace,
)
from medcloud.models.conditions import READY, Reason
from medcloud.models.consortium import (
    Consortium,
    ConsortiumCondition,
    ConsortiumReason,
    ConsortiumSpec,
    ConsortiumStatus,
    SharingCategory,
    SharingRule,
)
from medcloud.models.device import Device, DeviceSpec, DeviceState, DeviceStatus
from medcloud.models.devicegateway import (
    CodeMapping,
    DeviceClass,
    DeviceCounts,
    DeviceGateway,
    DeviceGatewaySpec,
    DeviceGatewayStatus,
    DeviceProtocol,
)
from medcloud.models.hospital import (
    DeviceCACertificate,
    DeviceCARotation,
    DeviceCAStatus,
    Hospital,
    HospitalAdmins,
    HospitalCondition,
    HospitalNetwork,
    HospitalQuota,
    HospitalReason,
    HospitalSpec,
    HospitalStatus,
    KekRotation,
    KeyEncryptionKey,
    PreviousDeviceCA,
    Tier,
)
from medcloud.models.recordstore import (
    DeletionPolicy,
    KeyRotation,
    RecordClass,
    RecordStore,
    RecordStoreCondition,
    RecordStoreReason,
    RecordStoreSpec,
    RecordStoreStatus,
    RecordStoreUsage,
    Retention,
    RetentionMode,
    SecretReference,
)
from medcloud.models.workload import WorkloadCondition, WorkloadReason

KINDS: tuple[type[Resource], ...] = (Hospital, RecordStore, DeviceGateway, AppInstance, Consortium, Device)
"""Every MedCloud kind, in the order their CRDs are written and installed."""

KINDS_BY_NAME: dict[str, type[Resource]] = {kind.__name__: kind for kind in KINDS}


def parse_object(manifest: dict[str, object]) -> Resource:
    """Parse any MedCloud object by its ``kind``."""
    kind = manifest.get("kind")
    if not isinstance(kind, str) or kind not in KINDS_BY_NAME:
        raise ValueError(f"not a MedCloud kind: {kind!r}")
    return KINDS_BY_NAME[kind].model_validate(manifest)


__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "KINDS_BY_NAME",
    "READY",
    "VERSION",
    "AppInstance",
    "AppInstanceSpec",
    "AppInstanceStatus",
    "CRDInfo",
    "CatalogApp",
    "CodeMapping",
    "Condition",
    "ConditionStatus",
    "Consortium",
    "ConsortiumCondition",
    "ConsortiumReason",
    "ConsortiumSpec",
    "ConsortiumStatus",
    "DeletionPolicy",
    "Device",
    "DeviceCACertificate",
    "DeviceCARotation",
    "DeviceCAStatus",
    "DeviceClass",
    "DeviceCounts",
    "DeviceGateway",
    "DeviceGatewaySpec",
    "DeviceGatewayStatus",
    "DeviceProtocol",
    "DeviceSpec",
    "DeviceState",
    "DeviceStatus",
    "Exposure",
    "Hospital",
    "HospitalAdmins",
    "HospitalCondition",
    "HospitalNetwork",
    "HospitalQuota",
    "HospitalReason",
    "HospitalSpec",
    "HospitalStatus",
    "KekRotation",
    "KeyEncryptionKey",
    "KeyRotation",
    "ObjectMeta",
    "Phase",
    "PreviousDeviceCA",
    "PrinterColumn",
    "Reason",
    "RecordClass",
    "RecordStore",
    "RecordStoreCondition",
    "RecordStoreReason",
    "RecordStoreSpec",
    "RecordStoreStatus",
    "RecordStoreUsage",
    "Resource",
    "ResourceRequirements",
    "Retention",
    "RetentionMode",
    "SecretReference",
    "SharingCategory",
    "SharingRule",
    "StatusBase",
    "Tier",
    "WorkloadCondition",
    "WorkloadReason",
    "duration_days",
    "hospital_namespace",
    "parse_object",
]
