"""What the AppInstance and DeviceGateway handlers share: one reconcile, failures, drift repair, status writes.

Both kinds are a Deployment (and a Service, ...) in a hospital's namespace,
wired to other MedCloud resources there. A reconcile, whatever triggered it:

1. reads the resource and what it is wired to (RecordStore, DeviceGateway,
   the tenant's LimitRange) and builds the children (``Workload.plan``, pure
   builders underneath);
2. applies them with ``apply.apply`` (read, compare, write only what
   differs) and prunes what is no longer wanted (an Ingress when the host
   is removed);
3. judges the Deployment's rollout and the dependencies, and writes the
   status only when it changed.

The triggers are registered by each kind's module: Kopf's create, update and
resume; watch events on the children (drift repair) and on what the
workload depends on (its RecordStore, DeviceGateway and the tenant's
LimitRange); and a resync timer, as a safety net that also retries a
failure seen while handling another object's event (Kopf retries only a
resource's own handlers). Kopf puts its finalizer on every resource with a
timer, so deleting a workload waits for the operator to remove it.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from medcloud.models import ConditionStatus, Phase, StatusBase
from medcloud_operator import OPERATOR_NAME, events, labels, metrics
from medcloud_operator.apply import Action, Applied, TerminatingError, apply, prune
from medcloud_operator.builders.hospital import LIMITS_NAME
from medcloud_operator.builders.workload import InvalidWorkloadError, WorkloadReason, child_selector, judge_rollout
from medcloud_operator.catalog import WorkloadSettings
from medcloud_operator.context import OperatorContext, get_context
from medcloud_operator.kube import DEPLOYMENT, LIMIT_RANGE, Kind, Kube, Manifest
from medcloud_operator.settings import OperatorSettings
from medcloud_operator.status import Check, dump, merge_patch

Logger = logging.Logger | logging.LoggerAdapter[Any]
SETTINGS_MEMO_KEY = "medcloud-workloads"

# Kopf fixes a timer's interval when the handler registers, so it is read from
# the environment at import time (the same setting as the Hospital resync).
RESYNC_SECONDS = OperatorSettings().resync_seconds


@kopf.on.startup()
def configure_workloads(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    settings = WorkloadSettings()
    memo[SETTINGS_MEMO_KEY] = settings
    logger.info("Apps from %s/<app>:<version>; gateways run %s", settings.app_image_prefix, settings.gateway_image)


def workload_settings(memo: kopf.Memo) -> WorkloadSettings:
    found = memo.get(SETTINGS_MEMO_KEY)
    if not isinstance(found, WorkloadSettings):
        raise RuntimeError("the workload settings are missing: was configure_workloads registered?")
    return found


@dataclass(frozen=True)
class Plan:
    """What a reconcile is to write, and what it found of the resources the workload depends on."""

    desired: list[Manifest]
    dependencies: Check


P = TypeVar("P", bound=Plan)
S = TypeVar("S", bound=StatusBase)


class Workload(ABC, Generic[P, S]):
    """One kind of workload: how its children are planned and its status is computed."""

    kind: Kind
    component: str
    """``app.kubernetes.io/component`` of its children; their watch events trigger drift repair."""
    child_kinds: tuple[Kind, ...]
    pruned_kinds: tuple[Kind, ...] = ()
    """Child kinds that exist only for some specs: one no longer desired is deleted."""

    @abstractmethod
    def plan(self, kube: Kube, settings: WorkloadSettings, body: Manifest) -> P:
        """Read what the resource is wired to and build its children; raise for an unrealisable spec."""

    @abstractmethod
    def parse_status(self, raw: Mapping[str, Any] | None) -> S:
        """The stored status; one the model cannot read counts as empty."""

    @abstractmethod
    def next_status(
        self,
        previous: S,
        *,
        generation: int | None,
        plan: P | None,
        deployment: Manifest | None,
        available: Check | None,
        failure: Check | None,
        spec_failed: bool,
    ) -> S:
        """The status after a reconcile; ``plan``, ``deployment`` and ``available`` are None when it failed before
        them (``available`` also when the rollout cannot be judged yet)."""


# --------------------------------------------------------------------------- failures


class WorkloadError(Exception):
    """A classified reconcile failure: why, and whether it will heal."""

    def __init__(self, reason: WorkloadReason, message: str, *, permanent: bool = False, delay: float = 10.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.permanent = permanent
        self.delay = delay

    @property
    def check(self) -> Check:
        return Check(ConditionStatus.FALSE, self.reason, self.message)


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def classify(exc: Exception) -> WorkloadError:
    """Turn what went wrong into a reason a person can act on, and a retry decision."""
    if isinstance(exc, WorkloadError):
        return exc
    if isinstance(exc, ValidationError | InvalidWorkloadError):
        return WorkloadError(WorkloadReason.INVALID_SPEC, f"The spec cannot be realised: {exc}", permanent=True)
    if isinstance(exc, TerminatingError):
        return WorkloadError(WorkloadReason.APPLY_FAILED, f"{exc}; waiting until it is gone.", delay=5)
    if isinstance(exc, ApiException):
        message = _api_message(exc)
        if exc.status == 403:
            return WorkloadError(
                WorkloadReason.FORBIDDEN, f"The operator is not allowed to do this (fix its RBAC): {message}", delay=60
            )
        if exc.status in (400, 422):
            return WorkloadError(
                WorkloadReason.INVALID_SPEC, f"The API server rejected a child object: {message}", permanent=True
            )
        return WorkloadError(WorkloadReason.APPLY_FAILED, f"The API server failed a request ({exc.status}): {message}")
    if isinstance(exc, HTTPError | OSError):
        return WorkloadError(WorkloadReason.APPLY_FAILED, f"The API server is unreachable: {exc}")
    raise exc


def _to_kopf_error(failure: WorkloadError) -> kopf.PermanentError | kopf.TemporaryError:
    if failure.permanent:
        return kopf.PermanentError(failure.message)
    return kopf.TemporaryError(failure.message, delay=failure.delay)


# --------------------------------------------------------------------------- reconcile


def write_status(kube: Kube, kind: Kind, namespace: str | None, name: str, stored: StatusBase, new: StatusBase) -> bool:
    """Patch the status subresource with what differs from ``stored``; True if a write was needed."""
    patch = merge_patch(dump(stored), dump(new))
    if not patch:
        return False
    kube.merge_patch(kind, name, {"status": patch}, namespace, subresource="status")
    return True


def reconcile(
    ctx: OperatorContext,
    settings: WorkloadSettings,
    workload: Workload[Any, Any],
    namespace: str,
    name: str,
    logger: Logger,
) -> None:
    """Bring one workload to its spec and report it; raises Kopf errors for retries."""
    kind = workload.kind.kind
    with ctx.locks(f"{kind}/{namespace}/{name}"), metrics.reconcile_timer(kind):
        body = ctx.kube.get(workload.kind, name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        try:
            _reconcile(ctx, settings, workload, body, logger)
        except kopf.TemporaryError:
            metrics.RECONCILE_TOTAL.labels(kind=kind, result=metrics.RESULT_REQUEUE).inc()
            raise
        except Exception:
            metrics.RECONCILE_TOTAL.labels(kind=kind, result=metrics.RESULT_ERROR).inc()
            raise
        metrics.RECONCILE_TOTAL.labels(kind=kind, result=metrics.RESULT_SUCCESS).inc()


def _reconcile(
    ctx: OperatorContext, settings: WorkloadSettings, workload: Workload[Any, Any], body: Manifest, logger: Logger
) -> None:
    kube = ctx.kube
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    previous = workload.parse_status(body.get("status"))
    results: list[Applied] = []
    plan: Plan | None = None
    deployment: Manifest | None = None
    available: Check | None = None
    failure: WorkloadError | None = None
    try:
        plan = workload.plan(kube, settings, body)
        for obj in plan.desired:
            results.append(apply(kube, obj, ctx.own_writes))
        selector = child_selector(workload.component, name)
        results += prune(kube, workload.pruned_kinds, namespace, selector, plan.desired)
        applied = next(r for r in results if r.kind == DEPLOYMENT.kind)
        deployment = applied.obj
        available = judge_rollout(deployment, written=applied.changed)
    except ApiException as exc:
        if exc.status == 409:
            # Someone changed the object between our read and write: read again soon.
            raise kopf.TemporaryError(f"conflict writing a child object: {_api_message(exc)}", delay=1) from exc
        failure = classify(exc)
    except Exception as exc:
        failure = classify(exc)

    new = workload.next_status(
        previous,
        generation=generation,
        plan=plan,
        deployment=deployment,
        available=available,
        failure=failure.check if failure is not None else None,
        spec_failed=failure is not None and failure.reason is WorkloadReason.INVALID_SPEC,
    )
    _report_changes(body, previous, generation, results, logger)
    written = write_status(kube, workload.kind, namespace, name, previous, new)
    assert new.phase is not None
    metrics.PHASES.set(workload.kind.kind, f"{namespace}/{name}", new.phase)
    if failure is not None:
        _fail(body, failure, written, logger)
    if written:
        _report_readiness(body, previous, new, logger)


QUIET_REASONS = frozenset({WorkloadReason.ROLLING_OUT, WorkloadReason.PROVISIONING})
"""Not Ready for these is the normal way up: a Normal Event, not a Warning."""


def _report_readiness(body: Manifest, previous: StatusBase, new: StatusBase, logger: Logger) -> None:
    """One Event each time Ready changes status or reason (a message that only counts pods posts none)."""
    ready, before = new.condition("Ready"), previous.condition("Ready")
    if ready is None or (before is not None and (before.status, before.reason) == (ready.status, ready.reason)):
        return
    meta = body["metadata"]
    if ready.status is ConditionStatus.TRUE:
        events.post(body, events.NORMAL, "Ready", ready.message)
    else:
        quiet = ready.reason in QUIET_REASONS
        events.post(body, events.NORMAL if quiet else events.WARNING, ready.reason, ready.message)
    logger.info(
        "%s %s/%s is %s: %s: %s", body["kind"], meta["namespace"], meta["name"], new.phase, ready.reason, ready.message
    )


def _fail(body: Manifest, failure: WorkloadError, status_written: bool, logger: Logger) -> NoReturn:
    """An Event when the failure is new (the status changed), a metric, a log line, then the Kopf error."""
    meta = body["metadata"]
    if status_written:
        events.post(body, events.WARNING, failure.reason, failure.message)
    metrics.RECONCILE_ERRORS.labels(kind=body["kind"], reason=failure.reason).inc()
    logger.warning("%s %s/%s: %s: %s", body["kind"], meta["namespace"], meta["name"], failure.reason, failure.message)
    raise _to_kopf_error(failure) from failure


def _report_changes(
    body: Manifest, previous: StatusBase, generation: int | None, results: list[Applied], logger: Logger
) -> None:
    """One Event per child that changed. A change while the spec stood still is drift being repaired."""
    steady = previous.phase in (Phase.READY, Phase.DEGRADED) and previous.observed_generation == generation
    for result in results:
        if not result.changed:
            continue
        if steady and result.action is not Action.DELETED:
            metrics.DRIFT_REPAIRS.labels(kind=result.kind).inc()
            reason, what = "DriftRepaired", f"{result.describe()}: it had been changed or deleted outside the operator"
        else:
            reason, what = result.action.value.capitalize(), result.describe()
        events.post(body, events.NORMAL, reason, what)
        logger.info("%s", what)


# --------------------------------------------------------------------------- triggers


def reconcile_quietly(
    ctx: OperatorContext,
    settings: WorkloadSettings,
    workload: Workload[Any, Any],
    namespace: str,
    name: str,
    logger: Logger,
) -> None:
    """Reconcile a workload on behalf of another object's event.

    A failure is already in the workload's status and its Events, and the
    workload's own handlers and timer retry it; it must not stop the
    remaining dependents of the same event from being reconciled.
    """
    try:
        reconcile(ctx, settings, workload, namespace, name, logger)
    except (kopf.TemporaryError, kopf.PermanentError) as exc:
        logger.debug("%s %s/%s: %s", workload.kind.kind, namespace, name, exc)


def owner_of(body: Mapping[str, Any], kind: Kind) -> str | None:
    """The name of the ``kind`` object that controls this child, from its owner references."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == kind.kind and ref.get("apiVersion") == kind.api_version:
            return str(ref["name"])
    return None


def register_drift_handlers(workload: Workload[Any, Any]) -> None:
    """Watch the workload's children: a child changed or deleted by someone else reconciles its owner."""

    def child_changed(
        type: str | None,  # Kopf passes the watch event type by this name
        body: kopf.Body,
        memo: kopf.Memo,
        logger: kopf.Logger,
        **_: Any,
    ) -> None:
        if type is None:
            # The initial listing at startup: the resume handlers reconcile every owner anyway.
            return
        meta = body["metadata"]
        owner = owner_of(body, workload.kind)
        namespace = meta.get("namespace")
        if owner is None or namespace is None:
            return
        ctx = get_context(memo)
        if type != "DELETED" and ctx.own_writes.is_own(
            body["kind"], namespace, meta["name"], meta.get("resourceVersion")
        ):
            return
        logger.debug("%s %s %s: reconciling %s %s", body["kind"], meta["name"], type.lower(), workload.kind.kind, owner)
        reconcile(ctx, workload_settings(memo), workload, namespace, owner, logger)

    for kind in workload.child_kinds:
        kopf.on.event(
            kind.api_version,
            kind.plural,
            id=f"drift-{workload.component}-{kind.plural}",
            labels={labels.MANAGED_BY: OPERATOR_NAME, labels.COMPONENT: workload.component},
        )(child_changed)


DependencyKey = tuple[str, str, str]
"""(namespace, kind, name) of an object workloads depend on, as their index is keyed."""


def dependency_keys(namespace: str, name: str, depends_on: list[tuple[Kind, str]]) -> dict[DependencyKey, str]:
    """Index entries of one workload: each object it reads, and the tenant's LimitRange (its ceiling)."""
    found = {(namespace, kind.kind, dependency): name for kind, dependency in depends_on}
    found[(namespace, LIMIT_RANGE.kind, LIMITS_NAME)] = name
    return found


def register_dependency_handlers(workload: Workload[Any, Any], index_id: str, kinds: tuple[Kind, ...]) -> None:
    """Watch what workloads depend on: a change reconciles the workloads that the index says read it.

    The index (``index_id``, built by the kind's module from each workload's
    spec with ``dependency_keys``) makes this a lookup, never a LIST. The
    tenant's LimitRange is watched by label, like the Hospital handler does.
    """

    def register(kind: Kind) -> None:
        def dependency_changed(
            type: str | None,  # Kopf passes the watch event type by this name
            namespace: str | None,
            name: str,
            memo: kopf.Memo,
            logger: kopf.Logger,
            **kwargs: Any,
        ) -> None:
            if type is None or namespace is None:
                # The initial listing at startup: the resume handlers reconcile every workload anyway.
                return
            # Kopf passes every index to every handler, as a keyword argument named by its id.
            index: kopf.Index[DependencyKey, str] = kwargs[index_id]
            ctx, settings = get_context(memo), workload_settings(memo)
            for owner in sorted(set(index.get((namespace, kind.kind, name), []))):
                reconcile_quietly(ctx, settings, workload, namespace, owner, logger)

        filters = {labels.MANAGED_BY: OPERATOR_NAME, labels.COMPONENT: labels.TENANCY} if kind is LIMIT_RANGE else None
        kopf.on.event(
            kind.api_version, kind.plural, id=f"{workload.component}-dependency-{kind.plural}", labels=filters
        )(dependency_changed)

    for kind in (*kinds, LIMIT_RANGE):
        register(kind)


def forget(workload: Workload[Any, Any], namespace: str | None, name: str) -> None:
    """Drop a deleted workload from ``medcloud_resources`` (its children go with it: owner references)."""
    metrics.PHASES.forget(workload.kind.kind, f"{namespace}/{name}")
