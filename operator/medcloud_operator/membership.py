"""A Consortium's status from its members' Hospitals: how many there are, how many are Ready, who is missing.

Pure: the consortium's name, spec and previous status and every Hospital
as read from the API server in; the next status out. A Consortium has no
children of its own: the network side of membership is each Hospital's
``spec.consortium`` (its namespace label and policies), which is why the
two are compared here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from medcloud.kube.client import Manifest
from medcloud.models import (
    ConditionStatus,
    ConsortiumCondition,
    ConsortiumReason,
    ConsortiumSpec,
    ConsortiumStatus,
    Phase,
)
from medcloud.models.conditions import set_condition
from medcloud_operator.builders.workload import status_of
from medcloud_operator.status import Check

NAMES_SHOWN = 10
"""Names listed in a message before "and N more": a condition message stays readable for 100 members."""


def names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:NAMES_SHOWN])
    more = len(items) - NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def members_check(spec: ConsortiumSpec, hospitals: Mapping[str, Manifest]) -> tuple[Check, int]:
    """(the Ready check, how many members are Ready)."""
    missing = [m for m in spec.members if m not in hospitals]
    not_ready = [m for m in spec.members if m in hospitals and not status_of(hospitals[m]).is_ready()]
    ready = len(spec.members) - len(missing) - len(not_ready)
    if missing:
        message = f"Member hospitals missing: {names(missing)}. Onboard them or remove them from spec.members."
        if not_ready:
            message += f" Not Ready: {names(not_ready)}."
        return Check(ConditionStatus.FALSE, ConsortiumReason.MEMBERS_MISSING, message), ready
    if not_ready:
        return (
            Check(
                ConditionStatus.FALSE,
                ConsortiumReason.MEMBERS_NOT_READY,
                f"{ready} of {len(spec.members)} members Ready; not Ready: {names(not_ready)}.",
            ),
            ready,
        )
    return (
        Check(ConditionStatus.TRUE, ConsortiumReason.ALL_MEMBERS_READY, f"All {len(spec.members)} members are Ready."),
        ready,
    )


def membership_check(name: str, spec: ConsortiumSpec, hospitals: Mapping[str, Manifest]) -> Check:
    """Whether the Hospitals agree with the member list (a missing member is the Ready condition's business)."""
    listed = set(spec.members)
    elsewhere = sorted(
        m for m in listed if m in hospitals and (hospitals[m].get("spec") or {}).get("consortium") != name
    )
    unlisted = sorted(
        h for h, body in hospitals.items() if h not in listed and (body.get("spec") or {}).get("consortium") == name
    )
    if not elsewhere and not unlisted:
        return Check(
            ConditionStatus.TRUE, ConsortiumReason.CONSISTENT, f"Every member Hospital names consortium {name}."
        )
    parts = []
    if elsewhere:
        parts.append(
            f"members whose spec.consortium is not {name} (their network policies do not admit fellow members): "
            f"{names(elsewhere)}"
        )
    if unlisted:
        parts.append(f"Hospitals naming {name} without being listed in spec.members: {names(unlisted)}")
    return Check(ConditionStatus.FALSE, ConsortiumReason.MEMBERSHIP_MISMATCH, "; ".join(parts) + ".")


def next_status(
    previous: ConsortiumStatus,
    *,
    name: str,
    generation: int | None,
    spec: ConsortiumSpec,
    hospitals: Mapping[str, Manifest],
    now: datetime,
) -> ConsortiumStatus:
    """Counts and conditions. Phase: Ready; Degraded once it had been Ready; Pending while members are missing;
    Provisioning while they exist but come up."""
    ready, ready_count = members_check(spec, hospitals)
    membership = membership_check(name, spec, hospitals)
    conditions = set_condition(
        previous.conditions, ConsortiumCondition.READY, ready.status, ready.reason, ready.message, generation, now
    )
    conditions = set_condition(
        conditions,
        ConsortiumCondition.MEMBERSHIP_CONSISTENT,
        membership.status,
        membership.reason,
        membership.message,
        generation,
        now,
    )
    if ready.ok:
        phase = Phase.READY
    elif previous.phase in (Phase.READY, Phase.DEGRADED):
        phase = Phase.DEGRADED
    elif ready.reason == ConsortiumReason.MEMBERS_MISSING:
        phase = Phase.PENDING
    else:
        phase = Phase.PROVISIONING
    return ConsortiumStatus(
        phase=phase,
        observed_generation=generation,
        conditions=conditions,
        member_count=len(spec.members),
        ready_members=ready_count,
    )
