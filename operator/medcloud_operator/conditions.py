"""The conditions a Hospital reports and why (set with :func:`medcloud.models.conditions.set_condition`)."""

from __future__ import annotations

from enum import StrEnum


class ConditionType(StrEnum):
    """The conditions a Hospital reports; Ready summarises the others."""

    READY = "Ready"
    NAMESPACE_READY = "NamespaceReady"
    """Namespace, Pod Security labels, quota, limit range and admin RBAC are as specified."""
    NETWORK_ISOLATED = "NetworkIsolated"
    """Default-deny network policies and the allowed exceptions are in place."""
    KEY_READY = "KeyReady"
    """The tenant key-encryption key exists in the operator's namespace."""


class Reason(StrEnum):
    """Why a condition is what it is; each names what a person can check or do."""

    RECONCILED = "Reconciled"
    PROVISIONING = "Provisioning"
    APPLY_FAILED = "ApplyFailed"
    """The API server refused or failed a write; the operator retries."""
    FORBIDDEN = "Forbidden"
    """The operator's RBAC lacks a permission; fix the ClusterRole, the operator retries."""
    INVALID_SPEC = "InvalidSpec"
    """The spec cannot be realised as written; edit the Hospital."""
    NAMESPACE_TERMINATING = "NamespaceTerminating"
    """A namespace of the same name is still being deleted; the operator waits."""
    OPERATOR_NAMESPACE_MISSING = "OperatorNamespaceMissing"
    """The operator's own namespace (for KEK Secrets) does not exist."""
    KEK_MISSING = "KEKMissing"
    """The KEK Secret was deleted: restore it from backup (never regenerated silently)."""
    KEK_INVALID = "KEKInvalid"
    """The KEK Secret exists but its material is unreadable: restore it from backup."""
    RECORD_STORES_PRESENT = "RecordStoresPresent"
    """Deletion is refused while RecordStores remain in the tenant namespace."""
    DELETING = "Deleting"
    """The tenant namespace and KEK are being removed."""
