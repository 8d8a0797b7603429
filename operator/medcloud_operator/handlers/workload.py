"""The skeleton of the AppInstance and DeviceGateway handlers: one reconcile, failures, drift repair, triggers.

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

Each kind's module describes the kind as a ``Workload`` (its builder, what
it reads, its status) and hands it to ``register``, which registers the
triggers: Kopf's create, update and resume; watch events on the children (drift repair) and on what the
workload depends on (its RecordStore, DeviceGateway and the tenant's
LimitRange); and a resync timer, as a safety net that also retries a
failure seen while handling another object's event (Kopf retries only a
resource's own handlers). Kopf puts its finalizer on every resource with a
timer, so deleting a workload waits for the operator to remove it.
"""

from __future__ import annotations

import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from medcloud.kube.client import DEPLOYMENT, LIMIT_RANGE, Kind, Manifest
from medcloud.models import GROUP, VERSION, ConditionStatus, Reason, StatusBase
from medcloud.models.conditions import now_utc
from medcloud.models.workload import WorkloadReason
from medcloud.tenancy import labels
from medcloud_operator import OPERATOR_NAME, background, childwatch, events, metrics
from medcloud_operator.apply import Applied, TerminatingError, apply, prune
from medcloud_operator.builders.hospital import LIMITS_NAME
from medcloud_operator.builders.workload import Findings, InvalidWorkloadError, child_selector, judge_rollout
from medcloud_operator.catalog import AppWithoutImageError
from medcloud_operator.childwatch import ChildWatch
from medcloud_operator.context import OperatorContext, get_context
from medcloud_operator.dependencies import DependencyIndex
from medcloud_operator.handlers.common import (
    Logger,
    ReconcileError,
    classify_request,
    raise_failure,
    reconcile_object,
    register_drift_handlers,
    register_triggers,
    report_applied,
    retry_on_conflict,
)
from medcloud_operator.kube import Kube
from medcloud_operator.settings import OperatorSettings, WorkloadSettings
from medcloud_operator.status import Check, parse_status, write_status
from medcloud_operator.workqueue import Priority


@dataclass(frozen=True)
class Plan:
    """What a reconcile is to write, and what it found of the resources the workload depends on."""

    desired: list[Manifest]
    dependencies: Check


P = TypeVar("P", bound=Plan)
S = TypeVar("S", bound=StatusBase)


class Workload(ABC, Generic[P, S]):
    """One kind of workload: what it reads, how its children are planned and how its status is computed.

    ``register`` turns an instance into the kind's Kopf handlers; the kind's
    module holds the instance and what differs between kinds.
    """

    kind: Kind
    component: str
    """``app.kubernetes.io/component`` of its children; their watch events trigger drift repair."""
    child_kinds: tuple[Kind, ...]
    pruned_kinds: tuple[Kind, ...] = ()
    """Child kinds that exist only for some specs: one no longer desired is deleted."""
    status_model: type[S]
    depends_on: tuple[tuple[str, Kind], ...]
    """Spec fields naming an object in the workload's namespace that it reads, with that object's kind:
    the object's events reconcile the workload."""

    @abstractmethod
    def plan(self, kube: Kube, settings: WorkloadSettings, body: Manifest) -> P:
        """Read what the resource is wired to and build its children; raise for an unrealisable spec."""

    @abstractmethod
    def next_status(self, previous: S, findings: Findings, plan: P | None, deployment: Manifest | None) -> S:
        """The status after a reconcile; ``plan`` and ``deployment`` are None when it failed before them."""

    def parse_status(self, raw: Mapping[str, Any] | None) -> S:
        """The stored status; one the model cannot read counts as empty."""
        return parse_status(self.status_model, raw)

    @property
    def handler_prefix(self) -> str:
        """Kopf handler ids start with it (``appinstance_changed``); they name the handlers in Kopf's logs."""
        return self.kind.kind.lower()


# --------------------------------------------------------------------------- failures


def classify(exc: Exception) -> ReconcileError:
    """Turn what went wrong into a reason a person can act on, and a retry decision."""
    if isinstance(exc, ReconcileError):
        return exc
    if isinstance(exc, AppWithoutImageError):
        return ReconcileError(WorkloadReason.APP_NOT_IN_CATALOG_IMAGE, f"Not run: {exc}.", permanent=True)
    if isinstance(exc, ValidationError | InvalidWorkloadError):
        return ReconcileError(Reason.INVALID_SPEC, f"The spec cannot be realised: {exc}", permanent=True)
    if isinstance(exc, TerminatingError):
        return ReconcileError(Reason.APPLY_FAILED, f"{exc}; waiting until it is gone.", delay=5)
    failure = classify_request(exc)
    if failure is None:
        raise exc
    return failure


# --------------------------------------------------------------------------- reconcile

UNREALISABLE = frozenset({Reason.INVALID_SPEC, WorkloadReason.APP_NOT_IN_CATALOG_IMAGE})
"""Failure reasons that no retry heals: the workload's phase is Failed."""


def reconcile(
    ctx: OperatorContext,
    settings: WorkloadSettings,
    workload: Workload[Any, Any],
    namespace: str,
    name: str,
    logger: Logger,
) -> None:
    """Bring one workload to its spec and report it; raises Kopf errors for retries."""
    reconcile_object(
        ctx, workload.kind, name, namespace, lambda body: _reconcile(ctx, settings, workload, body, logger)
    )


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
    failure: ReconcileError | None = None
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
        retry_on_conflict(exc, "a child object")
        failure = classify(exc)
    except Exception as exc:
        failure = classify(exc)

    findings = Findings(
        generation=generation,
        dependencies=plan.dependencies if plan is not None else None,
        available=available,
        failure=failure.check if failure is not None else None,
        spec_failed=failure is not None and failure.reason in UNREALISABLE,
        now=now_utc(),
    )
    new = workload.next_status(previous, findings, plan, deployment)
    report_applied(body, previous, generation, results, logger)
    written = write_status(kube, workload.kind, name, previous, new, namespace)
    assert new.phase is not None
    metrics.PHASES.set(workload.kind.kind, f"{namespace}/{name}", new.phase)
    if failure is not None:
        raise_failure(body, failure, written, logger)
    if written:
        _report_readiness(body, previous, new, logger)


QUIET_REASONS = frozenset({WorkloadReason.ROLLING_OUT, Reason.PROVISIONING})
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


# --------------------------------------------------------------------------- triggers


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings, workload: Workload[Any, Any]) -> None:
    """Register every trigger of one workload kind: its own events, a resync timer, its children, what it reads."""
    plural, prefix = workload.kind.plural, workload.handler_prefix

    def changed(namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        assert namespace is not None  # workloads are namespaced
        ctx = get_context(memo)
        reconcile(ctx, ctx.settings, workload, namespace, name, logger)

    register_triggers(
        registry, workload.kind, changed=changed, resync=changed, interval=settings.resync_seconds, prefix=prefix
    )

    index = DependencyIndex()

    async def seen(type: str | None, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> None:
        """Keep the dependency index (what this workload reads) and the phase metric of a deleted one."""
        assert namespace is not None  # workloads are namespaced
        if type == "DELETED":
            index.forget(namespace, name)
            # Out of ``medcloud_resources``; its children go with it (owner references).
            metrics.PHASES.forget(workload.kind.kind, f"{namespace}/{name}")
            return
        reads = [(namespace, kind.kind, str(spec[field])) for field, kind in workload.depends_on if spec.get(field)]
        # The tenant's LimitRange is every workload's ceiling.
        reads.append((namespace, LIMIT_RANGE.kind, LIMITS_NAME))
        index.update(namespace, name, reads)

    kopf.on.event(GROUP, VERSION, plural, id=f"{prefix}-dependencies", registry=registry)(seen)
    _register_dependency_handlers(registry, workload, index)
    _register_drift_handlers(registry, workload)


def owner_of(body: Mapping[str, Any], kind: Kind) -> str | None:
    """The name of the ``kind`` object that controls this child, from its owner references."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == kind.kind and ref.get("apiVersion") == kind.api_version:
            return str(ref["name"])
    return None


def _register_drift_handlers(registry: kopf.OperatorRegistry, workload: Workload[Any, Any]) -> None:
    """Watch the workload's children: a child changed or deleted by someone else reconciles its owner."""

    def owner(body: Manifest) -> str | None:
        return owner_of(body, workload.kind) if body["metadata"].get("namespace") else None

    def repair(ctx: OperatorContext, memo: kopf.Memo, owner: str, namespace: str | None, logger: Logger) -> None:
        assert namespace is not None  # owner() found none outside a namespace
        reconcile(ctx, ctx.settings, workload, namespace, owner, logger)

    register_drift_handlers(
        registry,
        workload.child_kinds,
        id_prefix=f"drift-{workload.component}",
        labels={labels.MANAGED_BY: OPERATOR_NAME, labels.COMPONENT: workload.component},
        owner_kind=workload.kind.kind,
        owner_of=owner,
        reconcile=repair,
    )


def _reconcile_dependents(
    ctx: OperatorContext, workload: Workload[Any, Any], namespace: str, owners: list[str], logger: Logger
) -> None:
    for owner in owners:
        try:
            reconcile(ctx, ctx.settings, workload, namespace, owner, logger)
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            # Already in the workload's status and Events, and its own handlers and timer
            # retry it; the remaining dependents of this event must still be reconciled.
            logger.debug("%s %s/%s: %s", workload.kind.kind, namespace, owner, exc)


def _register_dependency_handlers(
    registry: kopf.OperatorRegistry, workload: Workload[Any, Any], index: DependencyIndex
) -> None:
    """Watch what workloads depend on: a change reconciles the workloads that ``index`` says read it.

    The index makes this a lookup, never a LIST. The MedCloud kinds a workload reads are Kopf's
    watches; the tenant's LimitRange is a child watch (:mod:`medcloud_operator.childwatch`, selected
    by label like the Hospital's own children, from the current resourceVersion: nothing listed or
    kept per tenant).
    """

    async def reconcile_readers(
        type: str, namespace: str, kind: str, name: str, memo: kopf.Memo, logger: Logger
    ) -> None:
        owners = index.readers(namespace, kind, name)
        if not owners:
            return  # answered in the event loop: no thread, no queue
        logger.debug("%s %s/%s %s: reconciling %s %s", kind, namespace, name, type.lower(), workload.kind.kind, owners)
        ctx = get_context(memo)
        work = functools.partial(_reconcile_dependents, ctx, workload, namespace, owners, logger)
        await ctx.queue.run(workload.kind.kind.lower(), Priority.CHANGE, work)

    def register_kind(kind: Kind) -> None:
        async def dependency_changed(
            type: str | None,  # Kopf passes the watch event type by this name
            namespace: str | None,
            name: str,
            memo: kopf.Memo,
            logger: kopf.Logger,
            **_: Any,
        ) -> None:
            if type is None or namespace is None:
                # The initial listing at startup: the resume handlers reconcile every workload anyway.
                return
            await reconcile_readers(type, namespace, kind.kind, name, memo, logger)

        handler_id = f"{workload.component}-dependency-{kind.plural}"
        kopf.on.event(kind.api_version, kind.plural, id=handler_id, registry=registry)(dependency_changed)

    for _field, kind in workload.depends_on:
        register_kind(kind)

    async def limits_changed(type: str, body: Manifest, memo: kopf.Memo, logger: logging.Logger) -> None:
        meta = body["metadata"]
        if meta.get("namespace") and meta.get("name") == LIMITS_NAME:
            await reconcile_readers(type, meta["namespace"], LIMIT_RANGE.kind, LIMITS_NAME, memo, logger)

    selector = childwatch.label_selector({labels.MANAGED_BY: OPERATOR_NAME, labels.COMPONENT: labels.TENANCY})
    background.of(registry).child_watches.append(
        ChildWatch(f"{workload.component}-dependency-{LIMIT_RANGE.plural}", LIMIT_RANGE, selector, limits_changed)
    )
