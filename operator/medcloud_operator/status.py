"""Status of every kind: summarise the parts into Ready and a phase, and write it only when it differs.

Both sides go through the pydantic model and the same serialisation before
they are compared, so formatting differences (a timestamp's spelling, a
missing empty list) never cause a write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from medcloud.kube.client import Kind
from medcloud.models import READY, Condition, ConditionStatus, Phase, StatusBase
from medcloud.models.conditions import Reason, find_condition, set_condition
from medcloud_operator.kube import Kube

RECONCILING_DIGEST: ContextVar[str | None] = ContextVar("RECONCILING_DIGEST", default=None)
"""The digest of the object being reconciled in this thread (set by the reconcile frame); written with its status."""
STATUS_PRECONDITION: ContextVar[str | None] = ContextVar("STATUS_PRECONDITION", default=None)
"""The resourceVersion the reconcile's body had, when that body came from the watch rather than a fresh read.

The status write then carries it, so the API server refuses it (409) if the object changed since:
a status is never written from a body that was not the newest.
"""


class StaleBodyError(Exception):
    """The object changed after the watch event the reconcile started from: read it again and start over."""


@dataclass(frozen=True)
class Check:
    """The outcome of one part of a reconcile, as a condition will show it."""

    status: ConditionStatus
    reason: Reason | str
    message: str

    @property
    def ok(self) -> bool:
        return self.status is ConditionStatus.TRUE


def dump(status: StatusBase) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


S = TypeVar("S", bound=StatusBase)
Part = TypeVar("Part", bound=str)


def parse_status(model: type[S], raw: Mapping[str, Any] | None) -> S:
    """The stored status; one the model cannot read counts as empty (and is then rewritten whole)."""
    try:
        return model.model_validate(raw or {})
    except ValidationError:
        return model()


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The smallest JSON merge patch (RFC 7386) turning ``old`` into ``new``; ``{}`` when equal.

    Maps are patched key by key (a removed key becomes ``null``); lists and
    scalars are replaced whole, as merge patch requires.
    """
    patch: dict[str, Any] = {}
    for key, value in new.items():
        previous = old.get(key)
        if isinstance(value, Mapping) and isinstance(previous, Mapping):
            nested = merge_patch(previous, value)
            if nested:
                patch[key] = nested
        elif previous != value or key not in old:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


@dataclass(frozen=True)
class Summary:
    """Conditions and phase after a reconcile made of parts (the kind's own status fields are added by the caller)."""

    conditions: list[Condition]
    ready: Check
    phase: Phase


def summarise(
    previous: StatusBase,
    *,
    generation: int | None,
    checks: Mapping[Part, Check],
    parts: Sequence[Part],
    spec_failed: bool,
    provisioning: Check,
    ready: Check,
    now: datetime,
) -> Summary:
    """The conditions and phase for parts that came out as ``checks``.

    Parts not in ``checks`` (not reached because an earlier one failed) keep
    their previous condition; a part never reported is ``provisioning``.
    Ready is ``ready`` when every part in ``parts`` is True, otherwise False
    with the first failing part's reason and message. ``spec_failed`` (the
    spec cannot be realised as written) makes the phase Failed; other
    failures are Degraded after the object was once Ready, Provisioning before.
    """
    conditions = list(previous.conditions)
    for type_, check in checks.items():
        conditions = set_condition(conditions, type_, check.status, check.reason, check.message, generation, now)
    failing: Check | None = None
    for part in parts:
        condition = find_condition(conditions, part)
        if condition is None:
            failing = provisioning
            break
        if condition.status is not ConditionStatus.TRUE:
            failing = Check(condition.status, condition.reason, condition.message)
            break
    if failing is None:
        phase = Phase.READY
    else:
        ready = Check(ConditionStatus.FALSE, failing.reason, failing.message)
        if spec_failed:
            phase = Phase.FAILED
        elif previous.phase in (Phase.READY, Phase.DEGRADED):
            phase = Phase.DEGRADED
        else:
            phase = Phase.PROVISIONING
    conditions = set_condition(conditions, READY, ready.status, ready.reason, ready.message, generation, now)
    return Summary(conditions=conditions, ready=ready, phase=phase)


def write_status(
    kube: Kube, kind: Kind, name: str, stored: StatusBase | None, new: StatusBase, namespace: str | None = None
) -> bool:
    """Patch the status subresource with what differs from ``stored``; True if a write was needed.

    Within a reconcile frame the new status carries the digest the frame is reconciling
    (``observedDigest``): it goes out in the same patch, so recording it costs no request of its own.
    When the frame's body came from the watch (:data:`STATUS_PRECONDITION`), the patch is conditional
    on that resourceVersion; :class:`StaleBodyError` when the object has moved on since.
    """
    digest = RECONCILING_DIGEST.get()
    if digest is not None:
        new = new.model_copy(update={"observed_digest": digest})
    patch = merge_patch(dump(stored) if stored is not None else {}, dump(new))
    if not patch:
        return False
    precondition = STATUS_PRECONDITION.get()
    if precondition is None:
        kube.merge_patch(kind, name, {"status": patch}, namespace, subresource="status")
        return True
    try:
        kube.merge_patch(
            kind,
            name,
            {"metadata": {"resourceVersion": precondition}, "status": patch},
            namespace,
            subresource="status",
        )
    except ApiException as exc:
        if exc.status == 409:
            raise StaleBodyError(f"{kind.kind} {name} changed after the event its reconcile started from") from exc
        raise
    # This write moved the object on: a later write of the same reconcile goes without the precondition.
    STATUS_PRECONDITION.set(None)
    return True
