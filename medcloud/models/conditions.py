"""Conditions every kind shares: the Ready type, the common reasons, and one helper to set a condition.

Each kind's own condition types and reasons sit next to its model
(``HospitalCondition`` in :mod:`medcloud.models.hospital`, ...); the reasons
here are the ones every kind can report, so the operator, the API and the
CLI compare against one vocabulary, never against string literals.

:func:`set_condition` works like apimachinery's ``meta.SetStatusCondition``:
the transition time moves only when the status flips, so re-asserting the
same condition leaves the status byte-for-byte unchanged and costs no write.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum

from medcloud.models.common import Condition, ConditionStatus

READY = "Ready"
"""The condition type every kind reports; it summarises the kind's other conditions."""


class Reason(StrEnum):
    """Why a condition is what it is, for reasons any kind can report; each names what a person can check or do."""

    RECONCILED = "Reconciled"
    PROVISIONING = "Provisioning"
    APPLY_FAILED = "ApplyFailed"
    """The API server refused or failed a write; the operator retries."""
    FORBIDDEN = "Forbidden"
    """The operator's RBAC lacks a permission (deploy/*-rbac.yaml); fix it, the operator retries."""
    INVALID_SPEC = "InvalidSpec"
    """The spec cannot be realised as written; edit the resource."""
    DELETING = "Deleting"
    """The resource and what it owns are being removed."""
    KEK_MISSING = "KEKMissing"
    """The hospital's KEK Secret (or the version something is wrapped with) is gone: restore it from backup."""
    KEK_INVALID = "KEKInvalid"
    """The KEK Secret exists but is unreadable, or older than what it wrapped: restore it from backup."""


def now_utc() -> datetime:
    """The current time at the precision Kubernetes uses for conditions (whole seconds)."""
    return datetime.now(UTC).replace(microsecond=0)


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: StrEnum | str,
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
