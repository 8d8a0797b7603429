"""Create an onboarding plan in the cluster: all of it, or nothing it made.

The order is fixed (Hospital, stores, gateways, apps). Objects that already
exist exactly as asked are left alone, which makes a repeated request a
no-op; any difference refuses the whole request before anything is written.
A failure part-way deletes what this request created, newest first, and the
answer lists what was rolled back and, should a deletion itself fail, exactly
what is left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from medcloud.kube.client import Manifest
from medcloud.models import Hospital, Phase
from medcloud_api.kube import Kube, is_namespace_missing
from medcloud_api.plan import Desired, conflicts, differences
from medcloud_api.problems import ProblemError, from_kubernetes
from medcloud_api.schemas import Difference, ObjectRef

log = logging.getLogger(__name__)

NAMESPACE_POLL_SECONDS = 0.25


class NamespaceMissingError(Exception):
    """The operator did not create the tenant namespace in time."""


class TenantFailedError(Exception):
    """The operator reports the Hospital Failed: its spec cannot be realised, so no namespace will come."""


@dataclass
class Outcome:
    created: list[ObjectRef] = field(default_factory=list)
    unchanged: list[ObjectRef] = field(default_factory=list)


def conflict_problem(found: Sequence[Difference], what: str) -> ProblemError:
    shown = ", ".join(
        f"{d.object.kind} {d.object.name} {d.path} (requested {d.requested!r}, existing {d.existing!r})"
        for d in found[:3]
    )
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    detail = (
        f"{what} already exists and differs from this request: {shown}{more}. Nothing was changed; "
        "send the request that matches what exists, or PATCH the hospital."
    )
    return ProblemError(409, "conflict", detail, differences=list(found))


def onboard(kube: Kube, plan: Sequence[Desired], namespace_wait: float) -> Outcome:
    """Create what the plan asks for and does not exist yet; raise a ProblemError otherwise."""
    existing = {d.key: kube.get(d.kind, d.name, d.namespace) for d in plan}
    found = conflicts(plan, existing)
    if found:
        raise conflict_problem(found, f"hospital {plan[0].name}")

    outcome = Outcome(unchanged=[d.ref for d in plan if existing[d.key] is not None])
    created: list[tuple[Desired, str]] = []
    deadline = time.monotonic() + namespace_wait
    for desired in plan:
        if existing[desired.key] is not None:
            continue
        try:
            result = _create(kube, desired, deadline, plan[0].name)
        except (ApiException, NamespaceMissingError, TenantFailedError, urllib3.exceptions.HTTPError) as exc:
            raise _failed(kube, desired, exc, created, outcome.unchanged) from exc
        if result is None:
            outcome.unchanged.append(desired.ref)
        else:
            created.append((desired, str(result["metadata"]["uid"])))
            outcome.created.append(desired.ref)
    return outcome


def _tenant_failure(kube: Kube, hospital: str) -> str | None:
    """The operator's message when it has given up on the Hospital (phase Failed), else None."""
    found = kube.get(Hospital, hospital)
    status = (found or {}).get("status") or {}
    if status.get("phase") != Phase.FAILED:
        return None
    return str(status.get("message") or "the Hospital is Failed")


def _create(kube: Kube, desired: Desired, deadline: float, hospital: str) -> Manifest | None:
    """The created object; None when an identical one appeared meanwhile (a concurrent identical request)."""
    while True:
        try:
            return kube.create(desired.kind, desired.manifest())
        except ApiException as exc:
            if is_namespace_missing(exc):
                # The operator creates the namespace once it sees the Hospital,
                # unless it finds the spec cannot be realised: then waiting is futile.
                failure = _tenant_failure(kube, hospital)
                if failure is not None:
                    raise TenantFailedError(failure) from exc
                if time.monotonic() >= deadline:
                    raise NamespaceMissingError(str(desired.namespace)) from exc
                time.sleep(NAMESPACE_POLL_SECONDS)
                continue
            if exc.status == 409:
                found = kube.get(desired.kind, desired.name, desired.namespace)
                if found is not None:
                    diffs = differences(desired, found)
                    if not diffs:
                        return None
                    raise ProblemError(409, "conflict", "created concurrently with a different spec") from exc
            raise


def _rollback(kube: Kube, created: Sequence[tuple[Desired, str]]) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Delete what this request created, newest first; (rolled back, still there)."""
    rolled_back, remaining = [], []
    for desired, uid in reversed(created):
        try:
            # The uid precondition: never delete an object someone else made in the meantime.
            kube.delete(desired.kind, desired.name, desired.namespace, uid=uid)
            rolled_back.append(desired.ref)
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            log.error("rollback of %s %s failed: %s", desired.kind.__name__, desired.name, exc)
            remaining.append(desired.ref)
    return rolled_back, remaining


def _cause(desired: Desired, exc: Exception) -> ProblemError:
    if isinstance(exc, ProblemError):
        return exc
    if isinstance(exc, NamespaceMissingError):
        return ProblemError(
            503,
            "tenant-namespace-missing",
            f"namespace {desired.namespace} did not appear in time; is the MedCloud operator running?",
            headers={"Retry-After": "10"},
        )
    if isinstance(exc, TenantFailedError):
        return ProblemError(422, "tenant-failed", f"the operator cannot provision hospital: {exc}")
    if isinstance(exc, ApiException):
        return from_kubernetes(exc, desired.body_path)
    return ProblemError(503, "kubernetes-unavailable", "the Kubernetes API could not be reached")


def _failed(
    kube: Kube, desired: Desired, exc: Exception, created: Sequence[tuple[Desired, str]], unchanged: list[ObjectRef]
) -> ProblemError:
    cause = _cause(desired, exc)
    rolled_back, remaining = _rollback(kube, created)
    what = f"creating {desired.kind.__name__} {desired.name} failed: {cause.detail}"
    extensions: dict[str, Any] = {
        "failed": desired.ref,
        "rolledBack": rolled_back,
        "remaining": remaining,
        "unchanged": unchanged,
    }
    if remaining:
        names = ", ".join(f"{r.kind} {r.name}" for r in remaining)
        detail = f"{what}. Rolling back failed; these objects this request created still exist: {names}."
        return ProblemError(500, "onboarding-failed", detail, errors=cause.errors, **extensions)
    undone = (
        f"the {len(rolled_back)} objects this request had created were deleted"
        if rolled_back
        else "nothing was created"
    )
    detail = f"{what}. {undone[0].upper()}{undone[1:]}; objects that existed before were left as they were."
    return ProblemError(cause.status, cause.slug, detail, headers=cause.headers, errors=cause.errors, **extensions)
