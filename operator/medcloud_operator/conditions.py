"""Kubernetes-style conditions: one helper to set them and the small vocabulary the operator uses.

`set_condition` behaves like apimachinery's ``meta.SetStatusCondition``: the
transition time moves only when the status flips, so re-asserting the same
condition leaves the status byte-for-byte unchanged and costs no write.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum

from medcloud.models import Condition, ConditionStatus


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


def now_utc() -> datetime:
    """The current time at the precision Kubernetes uses for conditions (whole seconds)."""
    return datetime.now(UTC).replace(microsecond=0)


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: Reason | str,
    message: str,
    observed_generation: int | None,
    now: datetime,
) -> list[Condition]:
    """A copy of ``conditions`` with ``type_`` set; the order of the others is kept.

    ``lastTransitionTime`` becomes ``now`` only when the condition is new or its
    status changes; a changed reason or message alone keeps the old time.
    """

    def updated(transition: datetime) -> Condition:
        return Condition(
            type=type_,
            status=status,
            reason=str(reason),
            message=message,
            last_transition_time=transition,
            observed_generation=observed_generation,
        )

    result = [
        updated(c.last_transition_time if c.status == status else now) if c.type == type_ else c for c in conditions
    ]
    if not any(c.type == type_ for c in conditions):
        result.append(updated(now))
    return result


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of ``type_``, if present."""
    return next((c for c in conditions if c.type == type_), None)
