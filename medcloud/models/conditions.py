"""Setting Kubernetes-style conditions: one helper, the way apimachinery's ``meta.SetStatusCondition`` works.

The transition time moves only when the status flips, so re-asserting the
same condition leaves the status byte-for-byte unchanged and costs no write.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum

from medcloud.models.common import Condition, ConditionStatus


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
