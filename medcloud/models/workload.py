"""The conditions both workload kinds report: AppInstance and DeviceGateway (a Deployment wired to stores)."""

from __future__ import annotations

from enum import StrEnum


class WorkloadCondition(StrEnum):
    """The conditions an AppInstance or DeviceGateway reports; Ready summarises the other two."""

    READY = "Ready"
    DEPENDENCIES_READY = "DependenciesReady"
    """The RecordStore (and DeviceGateway) the workload is wired to exist and are Ready."""
    AVAILABLE = "Available"
    """The Deployment is applied and rolled out: every desired pod is updated and available."""


class WorkloadReason(StrEnum):
    """Reasons only workloads report (the shared ones are :class:`medcloud.models.conditions.Reason`)."""

    NO_DEPENDENCIES = "NoDependencies"
    DEPENDENCIES_READY = "DependenciesReady"
    RECORD_STORE_NOT_FOUND = "RecordStoreNotFound"
    RECORD_STORE_NOT_READY = "RecordStoreNotReady"
    DEVICE_GATEWAY_NOT_FOUND = "DeviceGatewayNotFound"
    DEVICE_GATEWAY_NOT_READY = "DeviceGatewayNotReady"
    ROLLOUT_COMPLETE = "RolloutComplete"
    ROLLING_OUT = "RollingOut"
    """Pods are being created, updated or replaced; nothing to do but wait."""
    REPLICA_FAILURE = "ReplicaFailure"
    """Pods are refused (quota, LimitRange, Pod Security): the message says by whom and why."""
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    """The rollout made no progress for 10 minutes (image missing, pods crashing, no room on nodes)."""
    APP_NOT_IN_CATALOG_IMAGE = "AppNotInCatalogImage"
    EXCHANGE_NOT_READY = "ExchangeNotReady"
    """An exchange-client app whose hospital's Consortium names no exchange yet: no children until it does
    (its pods would refuse to start without ``MEDCLOUD_EXCHANGE_URL``); looked at again every few seconds."""
    """The catalog app has no published image here: no Deployment is made, and the AppInstance is never Ready."""
