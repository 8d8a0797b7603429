"""Consortium handlers: report how many member Hospitals there are, how many are Ready, and who is missing.

Its status follows its members and its exchange (handlers thin: the exchange's grants
come from builders/exchange.py, its workload, Secrets and audit bucket from
medcloud_operator.exchangeserver). Triggers,
all funnelled into one ``reconcile`` (one LIST of Hospitals, a status write
only when something changed):

- the Consortium is created, changed or found at startup (Kopf's create/update/resume);
- a Hospital changes, appears or goes away: the consortia that list it (an
  index of consortia by member, so no listing) and the one its own
  ``spec.consortium`` names are reconciled;
- the exchange's Deployment or Service changes (its pods become ready or stop being ready);
- with ``MEDCLOUD_EXCHANGE_READINESS_URL`` set, a probe timer: the exchange's own ``/readyz`` is
  asked every ``exchange_probe_seconds``, and a verdict other than ExchangeReady's reconciles
  (Degraded when PostgreSQL or MinIO is gone, Ready again on its own when they are back);
- a resync timer, as a safety net.
"""

from __future__ import annotations

import functools
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from medcloud.kube.client import CONSORTIUM, DEPLOYMENT, HOSPITAL, NAMESPACE, ROLE, ROLE_BINDING, SERVICE, Manifest
from medcloud.models import (
    GROUP,
    VERSION,
    ConditionStatus,
    ConsortiumCondition,
    ConsortiumReason,
    ConsortiumSpec,
    ConsortiumStatus,
)
from medcloud.models.common import hospital_namespace
from medcloud.models.conditions import Reason, now_utc
from medcloud.models.consortium import ConsortiumExchangeStatus
from medcloud.tenancy import labels
from medcloud.tenancy.store import hospital_of_namespace
from medcloud_operator import events, exchangeprobe, exchangeserver, metrics
from medcloud_operator.apply import apply
from medcloud_operator.builders import exchange as exchange_rbac
from medcloud_operator.builders.exchange import build_exchange_rbac
from medcloud_operator.context import OperatorContext, get_context
from medcloud_operator.handlers.common import (
    Logger,
    ReconcileError,
    classify_request,
    on_watch_event,
    raise_failure,
    reconcile_object,
    register_drift_handlers,
    register_triggers,
    report_applied,
)
from medcloud_operator.membership import next_status
from medcloud_operator.settings import OperatorSettings
from medcloud_operator.status import parse_status, write_status
from medcloud_operator.workqueue import Priority

KIND = CONSORTIUM.kind
PLURAL = CONSORTIUM.plural


def reconcile(ctx: OperatorContext, name: str, logger: Logger) -> None:
    """Recount one Consortium's members and write its status if it changed; raises Kopf errors for retries."""
    reconcile_object(ctx, CONSORTIUM, name, None, lambda body: _reconcile(ctx, body, logger))


def _reconcile(ctx: OperatorContext, body: Manifest, logger: Logger) -> None:
    name, generation = body["metadata"]["name"], body["metadata"].get("generation")
    previous = parse_status(ConsortiumStatus, body.get("status"))
    try:
        spec = ConsortiumSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        # The CRD's schema and CEL rules admit only valid specs; this is a model/CRD mismatch.
        failure = ReconcileError(Reason.INVALID_SPEC, f"the spec does not match the model: {exc}", permanent=True)
        raise_failure(body, failure, False, logger)
    try:
        hospitals = {h["metadata"]["name"]: h for h in ctx.kube.list(HOSPITAL)}
        exchange = _grant_exchange(ctx, body, spec, previous)
        served = exchangeserver.provision(ctx, body, spec, previous)
        now = now_utc()
        new = next_status(previous, name=name, generation=generation, spec=spec, hospitals=hospitals, now=now)
        new = exchangeserver.with_exchange(new.model_copy(update={"exchange": exchange}), served, generation, now)
        written = write_status(ctx.kube, CONSORTIUM, name, previous, new)
    except (ApiException, HTTPError, OSError) as exc:
        failure = classify_request(exc) or ReconcileError(Reason.APPLY_FAILED, str(exc))
        raise_failure(body, failure, False, logger)
    report_applied(body, previous, generation, served.applied, logger)
    assert new.phase is not None
    metrics.PHASES.set(KIND, name, new.phase)
    if not written:
        if served.retry:
            raise kopf.TemporaryError(served.check.message, delay=30)
        return
    for type_ in (
        ConsortiumCondition.READY,
        ConsortiumCondition.MEMBERSHIP_CONSISTENT,
        ConsortiumCondition.EXCHANGE_READY,
    ):
        condition, before = new.condition(type_), previous.condition(type_)
        if condition is None or (
            before is not None and (before.status, before.reason) == (condition.status, condition.reason)
        ):
            continue
        ok = condition.status is ConditionStatus.TRUE
        events.post(body, events.NORMAL if ok else events.WARNING, condition.reason, condition.message)
        logger.info("Consortium %s: %s %s: %s", name, type_, condition.reason, condition.message)
    if served.retry:
        raise kopf.TemporaryError(served.check.message, delay=30)


def _grant_exchange(
    ctx: OperatorContext, body: Manifest, spec: ConsortiumSpec, previous: ConsortiumStatus
) -> ConsortiumExchangeStatus:
    """The exchange's RBAC, exactly as far as spec.sharing reaches; members no rule shares from lose theirs.

    A publisher whose namespace does not exist yet is granted on a later reconcile (its
    Hospital's events reconcile the Consortium); the status lists who is granted now.
    """
    name = body["metadata"]["name"]
    settings = ctx.settings
    granted: list[str] = []
    desired = build_exchange_rbac(body, spec, settings.operator_namespace, settings.exchange_cluster_role)
    present: dict[str, bool] = {}
    for manifest in desired:
        namespace = manifest["metadata"].get("namespace")
        if namespace is not None:
            if namespace not in present:
                present[namespace] = ctx.kube.get(NAMESPACE, namespace) is not None
            if not present[namespace]:
                continue
        apply(ctx.kube, manifest, ctx.own_writes)
        if namespace is not None and manifest["kind"] == "RoleBinding":
            granted.append(str(hospital_of_namespace(namespace)))
    wanted = set(exchange_rbac.exchange_stores(spec))
    before = set(previous.exchange.publishers) if previous.exchange else set()
    for hospital in sorted((before | set(spec.members)) - wanted):
        namespace = hospital_namespace(hospital)
        for kind in (ROLE_BINDING, ROLE):
            live = ctx.kube.get(kind, exchange_rbac.ROLE_NAME, namespace)
            owner = ((live or {}).get("metadata", {}).get("labels") or {}).get(labels.CONSORTIUM)
            if owner == name:
                ctx.kube.delete(kind, exchange_rbac.ROLE_NAME, namespace)
    account = exchange_rbac.account_name(name)
    return ConsortiumExchangeStatus(service_account=f"{settings.operator_namespace}/{account}", publishers=granted)


def consortium_changed(name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    reconcile(get_context(memo), name, logger)


# The verdicts the probe can change: an exchange that runs (its pods ready) and serves, or does not.
PROBED = (ConsortiumReason.EXCHANGE_SERVING, ConsortiumReason.EXCHANGE_UNAVAILABLE, ConsortiumReason.EXCHANGE_STARTING)


def probe_exchange(ctx: OperatorContext, name: str, status: Manifest | None, logger: Logger) -> None:
    """Ask the exchange whether it serves; reconcile only when the answer differs from ExchangeReady."""
    current = parse_status(ConsortiumStatus, status).condition(ConsortiumCondition.EXCHANGE_READY)
    if current is None or current.reason not in PROBED:
        return
    unready = exchangeprobe.unready_because(ctx.settings, name)
    if (unready is None) == (current.status is ConditionStatus.TRUE):
        return
    logger.info("Consortium %s: the exchange's readiness changed (%s)", name, unready or "it serves")
    reconcile(ctx, name, logger)


def consortium_deleted(type: str | None, name: str, **_: Any) -> None:
    if type == "DELETED":
        metrics.PHASES.forget(KIND, name)


MEMBER_INDEX = "consortia_by_member"
"""The index's id, and the keyword argument Kopf passes it to every handler by."""


def consortia_by_member(name: str, spec: kopf.Spec, **_: Any) -> dict[str, str]:
    """Which consortia list which Hospital: a Hospital's events reach them without a LIST."""
    return {str(member): name for member in spec.get("members") or []}


async def member_changed(
    type: str | None, name: str, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    # Kopf passes every index as a keyword argument named after its function.
    index: kopf.Index[str, str] = kwargs[MEMBER_INDEX]
    if type is None:
        # The initial listing at startup: the resume handlers reconcile every Consortium anyway.
        return
    claimed = (body.get("spec") or {}).get("consortium")
    affected = set(index.get(name, [])) | ({str(claimed)} if claimed else set())
    if not affected:
        return  # most Hospital events, answered in the event loop: no thread, no queue
    ctx = get_context(memo)
    work = functools.partial(_recount, ctx, sorted(affected), logger)
    await ctx.queue.run(CONSORTIUM.kind.lower(), Priority.CHANGE, work)


def _recount(ctx: OperatorContext, consortia: list[str], logger: Logger) -> None:
    for consortium in consortia:
        try:
            reconcile(ctx, consortium, logger)
        except (kopf.PermanentError, kopf.TemporaryError) as exc:
            # The Consortium's own handlers and timer retry it; the other consortia must still be recounted.
            logger.debug("Consortium %s: %s", consortium, exc)


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    """The Consortium's triggers: its own events, a resync timer, and its member Hospitals' events."""
    register_triggers(
        registry, CONSORTIUM, changed=consortium_changed, resync=consortium_changed, interval=settings.resync_seconds
    )
    kopf.on.event(GROUP, VERSION, PLURAL, id="consortium-deleted", registry=registry)(consortium_deleted)
    kopf.index(GROUP, VERSION, PLURAL, id=MEMBER_INDEX, registry=registry)(consortia_by_member)
    # From the Hospital's own event handler: no Kopf handler of its own per Hospital event (Kopf still hands it
    # the member index, as it hands every index to every handler).
    on_watch_event(registry, HOSPITAL, member_changed)
    # The exchange's Deployment (its pods' readiness) and Service: a change reconciles their Consortium.
    register_drift_handlers(
        registry,
        (DEPLOYMENT, SERVICE),
        id_prefix="consortium-exchange",
        labels={labels.COMPONENT: exchange_rbac.COMPONENT, labels.MANAGED_BY: labels.OPERATOR_NAME},
        owner_kind=KIND,
        owner_of=lambda child: (child["metadata"].get("labels") or {}).get(labels.CONSORTIUM),
        reconcile=lambda ctx, _memo, owner, _namespace, logger: reconcile(ctx, owner, logger),
    )
    if settings.exchange_readiness_url:

        async def on_probe(name: str, status: kopf.Status, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
            ctx = get_context(memo)
            work = functools.partial(probe_exchange, ctx, name, dict(status), logger)
            await ctx.queue.run(KIND.lower(), Priority.REFRESH, work)

        kopf.timer(
            GROUP,
            VERSION,
            PLURAL,
            id="consortium_exchange_probe",
            interval=settings.exchange_probe_seconds,
            initial_delay=settings.exchange_probe_seconds,
            registry=registry,
        )(on_probe)
