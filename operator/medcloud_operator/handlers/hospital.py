"""Hospital handlers: read the Hospital, build its tenancy, apply it, write status.

Triggers, all funnelled into one `reconcile`:

- the Hospital is created, changed or found at startup (Kopf's create/update/resume);
- a child of its tenancy changes or disappears (watch events on the child
  kinds, by label): drift repair;
- another Hospital with the same institution code is deleted (the code is
  free for the oldest one left);
- a resync timer, for what no watch reports (the KEK Secret is not watched:
  the operator never streams Secret contents) and as a safety net.

The tenancy includes the RoleBinding that grants the operator itself Secrets
in the tenant namespace (for RecordStore credentials), so the operator's own
RBAC needs no Secrets cluster-wide. ``spec.keyRotation.rotateNow`` growing
adds a KEK version (see :mod:`medcloud_operator.kek`); RecordStores re-wrap
their data keys under it on their next refresh. ``spec.deviceCaRotation.rotateNow``
growing, or the device CA nearing its end, rotates the device CA
(:func:`medcloud_operator.deviceca.keep_device_ca`); each reconcile also
retires a previous device CA no device needs any more.

Deletion goes through a finalizer: refused while RecordStores remain in the
tenant namespace, otherwise the namespace and then the KEK are removed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NoReturn

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from medcloud.kube.client import (
    APP_INSTANCE,
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    DEVICE,
    DEVICE_GATEWAY,
    HOSPITAL,
    LIMIT_RANGE,
    NAMESPACE,
    NETWORK_POLICY,
    RECORD_STORE,
    RESOURCE_QUOTA,
    ROLE,
    ROLE_BINDING,
    SECRET,
    Kind,
    Manifest,
)
from medcloud.models import (
    GROUP,
    VERSION,
    ConditionStatus,
    HospitalCondition,
    HospitalReason,
    HospitalSpec,
    HospitalStatus,
    KeyEncryptionKey,
    Phase,
    hospital_namespace,
)
from medcloud.models.conditions import Reason, now_utc
from medcloud.tenancy import deviceca, kek, labels, onboarding
from medcloud.tenancy.institutions import code_holder
from medcloud.tenancy.store import hospital_of_namespace
from medcloud_operator import OPERATOR_NAME, events, metrics, sharding
from medcloud_operator.apply import Action, Applied, TerminatingError, apply, differences, prune
from medcloud_operator.brokertrust import ensure_broker_trust
from medcloud_operator.builders.hospital import (
    QUOTA_NAME,
    InvalidSpecError,
    admin_cluster_role_name,
    build_admin_cluster_access,
    build_resource_quota,
    build_tenancy,
    next_status,
    onboarding_check,
    reported_usage,
    terminating_status,
)
from medcloud_operator.context import OperatorContext, get_context
from medcloud_operator.deviceca import DeviceCAState, keep_device_ca
from medcloud_operator.handlers.common import (
    Logger,
    ReconcileError,
    announce,
    api_message,
    classify_request,
    handling,
    is_settled,
    last_write_was_status,
    on_watch_event,
    post_caused,
    queued,
    raise_failure,
    reconcile_object,
    register_drift_handlers,
    register_triggers,
    report_applied,
    retry_on_conflict,
)
from medcloud_operator.handlers.devicegateway import refresh_gateways
from medcloud_operator.kek import KekMissingError, KekState, ensure_kek
from medcloud_operator.settings import OperatorSettings
from medcloud_operator.status import Check, parse_status, write_status
from medcloud_operator.workqueue import Priority

KIND = "Hospital"
PLURAL = "hospitals"

ONBOARDED_KINDS: tuple[Kind, ...] = (RECORD_STORE, DEVICE_GATEWAY, APP_INSTANCE)
"""Kinds an onboarding creates in the tenant namespace (the Onboarded condition checks them)."""
CHILD_KINDS: tuple[Kind, ...] = (
    NAMESPACE,
    RESOURCE_QUOTA,
    LIMIT_RANGE,
    NETWORK_POLICY,
    ROLE,
    ROLE_BINDING,
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
)
"""Kinds of the tenancy objects; their watch events trigger drift repair."""
PRUNED_KINDS: tuple[Kind, ...] = (RESOURCE_QUOTA, LIMIT_RANGE, NETWORK_POLICY, ROLE, ROLE_BINDING)
"""Namespaced tenancy kinds: one the spec no longer asks for is deleted."""
CLUSTER_PRUNED_KINDS: tuple[Kind, ...] = (CLUSTER_ROLE, CLUSTER_ROLE_BINDING)
"""Cluster-scoped tenancy kinds (the admins' access to the Hospital itself): likewise deleted when not asked for."""


def _condition_for(kind: str) -> HospitalCondition:
    if kind == NETWORK_POLICY.kind:
        return HospitalCondition.NETWORK_ISOLATED
    if kind == SECRET.kind:
        return HospitalCondition.KEY_READY
    return HospitalCondition.NAMESPACE_READY


def classify(exc: Exception, stage: HospitalCondition, settings: OperatorSettings) -> ReconcileError:
    """Turn what went wrong into a reason a person can act on, and a retry decision."""
    if isinstance(exc, ReconcileError):
        return exc
    if isinstance(exc, ValidationError | InvalidSpecError):
        return ReconcileError(Reason.INVALID_SPEC, f"The spec cannot be realised: {exc}", permanent=True)
    if isinstance(exc, KekMissingError):
        return ReconcileError(Reason.KEK_MISSING, str(exc), permanent=True)
    if isinstance(exc, kek.KekInvalidError):
        # Not permanent: the operator does not watch Secrets, so it looks again to notice a restored
        # (or, when no key was ever issued from it, deleted) Secret.
        return ReconcileError(
            Reason.KEK_INVALID,
            f"{exc}; restore the Secret from backup (or, if this Hospital never had a key, delete it: "
            "the operator then issues one).",
            delay=settings.kek_recheck_seconds,
        )
    if isinstance(exc, TerminatingError):
        return ReconcileError(HospitalReason.NAMESPACE_TERMINATING, f"{exc}; waiting until it is gone.", delay=5)
    if isinstance(exc, ApiException) and exc.status == 404 and stage is HospitalCondition.KEY_READY:
        return ReconcileError(
            HospitalReason.OPERATOR_NAMESPACE_MISSING,
            f"Namespace {settings.operator_namespace} for KEK Secrets is missing: {api_message(exc)}",
            delay=30,
        )
    failure = classify_request(exc)
    if failure is None:
        raise exc
    return failure


def _network_summary(objects: list[Manifest]) -> str:
    names = sorted(o["metadata"]["name"] for o in objects if o["kind"] == NETWORK_POLICY.kind)
    return f"Default deny in place; {len(names)} network policies: {', '.join(names)}."


def reconcile(ctx: OperatorContext, name: str, logger: Logger, seen: Mapping[str, Any] | None = None) -> None:
    """Bring one Hospital's tenancy to its spec and report it; raises Kopf errors for retries.

    ``seen``: the body of the watch event behind this reconcile, which saves a GET (:func:`reconcile_object`).
    """
    reconcile_object(ctx, HOSPITAL, name, None, lambda body: _reconcile(ctx, body, logger), seen)


def _reconcile(ctx: OperatorContext, body: Manifest, logger: Logger) -> None:
    settings, kube = ctx.settings, ctx.kube
    name = body["metadata"]["name"]
    generation = body["metadata"].get("generation")
    namespace = hospital_namespace(name)
    previous = parse_status(HospitalStatus, body.get("status"))
    checks: dict[HospitalCondition, Check] = {}
    results: list[Applied] = []
    stage = HospitalCondition.NAMESPACE_READY
    try:
        spec = HospitalSpec.model_validate(body.get("spec") or {})
        _claim_institution_code(ctx, name, spec.institution_code)
        desired = build_tenancy(name, spec, settings)
        cluster_wide = build_admin_cluster_access(name, spec, body["metadata"]["uid"])
        # Never reconciled (onboarding): the children are created without a read first.
        fresh = previous.observed_generation is None
        for obj in (*desired, *cluster_wide):
            stage = _condition_for(obj["kind"])
            results.append(apply(kube, obj, ctx.own_writes, expect_absent=fresh))
        stage = HospitalCondition.NETWORK_ISOLATED
        new_tenancy = bool(results) and results[0].kind == NAMESPACE.kind and results[0].action is Action.CREATED
        if not new_tenancy:
            # A namespace created just now holds nothing to prune.
            results += prune(kube, PRUNED_KINDS, namespace, labels.tenancy_selector(name), desired)
        stage = HospitalCondition.NAMESPACE_READY
        if not (fresh and new_tenancy):
            # Nor is there cluster-wide access to prune for a Hospital never reconciled whose namespace is new:
            # its names are its own, and an older Hospital of that name took its access with it when deleted
            # (its offboarding deletes it; the owner references have the garbage collector do it otherwise).
            results += prune(kube, CLUSTER_PRUNED_KINDS, None, labels.tenancy_selector(name), cluster_wide)
        checks[HospitalCondition.NAMESPACE_READY] = Check(
            ConditionStatus.TRUE,
            Reason.RECONCILED,
            f"Namespace {namespace} has Pod Security restricted, quota, limits and admin access as specified.",
        )
        checks[HospitalCondition.NETWORK_ISOLATED] = Check(
            ConditionStatus.TRUE, Reason.RECONCILED, _network_summary(desired)
        )
        stage = HospitalCondition.KEY_READY
        state = ensure_kek(
            kube,
            name,
            settings.operator_namespace,
            _issued_version(previous.kek),
            rotate_now=spec.key_rotation.rotate_now,
            observed_rotate_now=previous.kek.observed_rotate_now if previous.kek is not None else 0,
        )
        key = state.current
        checks[HospitalCondition.KEY_READY] = Check(
            ConditionStatus.TRUE,
            Reason.RECONCILED,
            f"KEK version {key.version} is in place in namespace {settings.operator_namespace}"
            + (f" (versions {_listed(state.versions)} kept)." if len(state.versions) > 1 else "."),
        )
        # The device CA is a tenant key too: a failure to rotate or retire it is the KeyReady part's.
        # A namespace created just now holds no device CA (a Device or DeviceGateway makes one): no reads for it.
        device_ca = None if new_tenancy else keep_device_ca(kube, namespace, name, spec.device_ca_rotation.rotate_now)
        stage = HospitalCondition.ONBOARDED
        checks[HospitalCondition.ONBOARDED] = _onboarding(ctx, body, namespace)
    except ApiException as exc:
        retry_on_conflict(exc, "a child object")
        _fail(ctx, body, previous, generation, namespace, checks, stage, classify(exc, stage, settings), logger)
    except Exception as exc:
        _fail(ctx, body, previous, generation, namespace, checks, stage, classify(exc, stage, settings), logger)

    quota_result = next((r for r in results if r.kind == RESOURCE_QUOTA.kind and r.name == QUOTA_NAME), None)
    quota = quota_result.obj if quota_result is not None else None
    kek_status = KeyEncryptionKey(
        version=key.version,
        created_at=key.created_at,
        observed_rotate_now=state.observed_rotate_now,
        versions=list(state.versions),
    )
    new = next_status(
        previous,
        generation=generation,
        namespace=namespace,
        checks=checks,
        kek=kek_status,
        device_ca=device_ca.status if device_ca is not None else None,
        quota_usage=reported_usage(quota, created_in_new_namespace=new_tenancy and _created(quota_result)),
        spec_failed=False,
        now=now_utc(),
    )
    caused = _report_changes(body, previous, generation, results, state, settings, logger)
    if device_ca is not None:
        _device_ca_changed(ctx, body, namespace, previous, device_ca, logger)
    try:
        changed_phase = write_status(kube, HOSPITAL, name, previous, new) and new.phase is not previous.phase
    except Exception:
        post_caused(body, caused)  # the children were written: said even though the status was not
        raise
    ctx.quota_usage.record(name, new.quota_usage)
    if changed_phase:
        # One Event, not two, for an onboarding: the phase it reached and what it created for it.
        post_caused(body, caused, into=("Ready", new.message or ""))
        logger.info("Hospital %s is %s", name, new.phase)
    else:
        post_caused(body, caused)
    assert new.phase is not None
    metrics.PHASES.set(KIND, name, new.phase)
    metrics.KEK_AGE.set(name, key.created_at)
    metrics.set_device_ca_expiry(name, device_ca.status if device_ca is not None else None)


def _device_ca_changed(
    ctx: OperatorContext,
    body: Manifest,
    namespace: str,
    previous: HospitalStatus,
    device_ca: DeviceCAState,
    logger: Logger,
) -> None:
    """What a rotation or retirement must reach at once: the platform broker's bundle (both CAs, or one fewer),
    the hospital's gateways (serving certificates of the new CA); and one Event each, naming CAs, never keys."""
    trust = device_ca.trust
    if trust.crl_signed:
        ensure_broker_trust(ctx.kube, ctx.settings, ctx.settings.operator_namespace, namespace)
    if device_ca.rotated_because is not None and device_ca.replaced is not None:
        kept = (
            f"; {deviceca.ca_name(device_ca.replaced.cert_pem)} stays trusted until {trust.previous_until.isoformat()}"
            if trust.previous_until is not None
            else f"; {deviceca.ca_name(device_ca.replaced.cert_pem)} is retired: no device certificate of it remains"
        )
        message = f"device CA {deviceca.ca_name(trust.ca.cert_pem)} is now current ({device_ca.rotated_because}){kept}"
        announce(body, "DeviceCARotated", message, logger)
        refresh_gateways(ctx, namespace, logger)
    # Said when the status stops naming it, whoever retired it (this reconcile, or a Device's or gateway's).
    was = previous.device_ca.previous if previous.device_ca is not None else None
    if was is not None and device_ca.status.previous is None and device_ca.rotated_because is None:
        message = f"device CA {was.name} retired: no unexpired, unrevoked device certificate of it remains"
        announce(body, "DeviceCARetired", message, logger)


def _created(result: Applied | None) -> bool:
    return result is not None and result.action is Action.CREATED


def _onboarding(ctx: OperatorContext, body: Manifest, namespace: str) -> Check:
    """Whether what an unfinished onboarding asked for exists (see :mod:`medcloud.tenancy.onboarding`)."""
    wanted = onboarding.intended(body["metadata"].get("annotations"))
    if not wanted:
        return onboarding_check(wanted, [])
    existing = [
        (kind.kind, item["metadata"]["name"]) for kind in ONBOARDED_KINDS for item in ctx.kube.list(kind, namespace)
    ]
    return onboarding_check(wanted, existing)


def _claim_institution_code(ctx: OperatorContext, name: str, code: str) -> None:
    """Refuse to build a tenancy for a Hospital whose code an older Hospital holds.

    Checked on every reconcile (the resync timer included), so the duplicate
    recovers by itself once the holder is deleted. The claimants come from the
    index the Hospital watch keeps (:mod:`medcloud_operator.institutions`), not a LIST.
    """
    if ctx.settings.shard_selector:
        # This replica watches its shard only, so its index does not see every claimant: ask the API server.
        holder = code_holder(ctx.kube.list(HOSPITAL), code)
    else:
        holder = ctx.institution_codes.holder(code)
    if holder is not None and holder != name:
        raise ReconcileError(
            HospitalReason.INSTITUTION_CODE_TAKEN,
            f"Institution code {code} already belongs to Hospital {holder}, created earlier; the code identifies "
            "one institution in every audit trail. No namespace is created for this Hospital: delete it, or "
            f"delete {holder} if this is the institution's real record.",
            permanent=True,
        )


def _issued_version(current: KeyEncryptionKey | None) -> int | None:
    return current.version if current is not None else None


def _listed(versions: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in versions)


def _fail(
    ctx: OperatorContext,
    body: Manifest,
    previous: HospitalStatus,
    generation: int | None,
    namespace: str,
    checks: dict[HospitalCondition, Check],
    stage: HospitalCondition,
    failure: ReconcileError,
    logger: Logger,
) -> NoReturn:
    """Record a failure in status (and an Event when it is new), then raise the Kopf error that retries it."""
    name = body["metadata"]["name"]
    checks[stage] = failure.check
    new = next_status(
        previous,
        generation=generation,
        namespace=namespace,
        checks=checks,
        kek=None,
        device_ca=previous.device_ca,
        quota_usage=None,
        # Failed: what no retry alone can mend (someone must change the spec or the KEK Secret).
        spec_failed=failure.reason in (Reason.INVALID_SPEC, HospitalReason.INSTITUTION_CODE_TAKEN, Reason.KEK_INVALID),
        now=now_utc(),
    )
    written = write_status(ctx.kube, HOSPITAL, name, previous, new)
    assert new.phase is not None
    metrics.PHASES.set(KIND, name, new.phase)
    raise_failure(body, failure, written, logger)


def _report_changes(
    body: Manifest,
    previous: HospitalStatus,
    generation: int | None,
    results: list[Applied],
    key: KekState,
    settings: OperatorSettings,
    logger: Logger,
) -> list[tuple[str, str]]:
    """Events per drift repaired and per KEK created or rotated; what the spec caused is returned (deferred).

    The caller posts those (:func:`post_caused`), folded into its Ready Event when the phase changes.
    """
    caused = report_applied(body, previous, generation, results, logger, defer=True)
    if key.created:
        message = f"KEK version {key.current.version} created in namespace {settings.operator_namespace}"
        announce(body, "KEKCreated", message, logger)
    if key.rotated_from is not None:
        message = (
            f"KEK version {key.current.version} is now current (spec.keyRotation.rotateNow "
            f"{key.observed_rotate_now}); version {key.rotated_from} and older are kept until every RecordStore "
            "has re-wrapped its data keys"
        )
        announce(body, "KEKRotated", message, logger)
    return caused


# --------------------------------------------------------------------------- handlers


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    """The Hospital's triggers: its own events, a resync timer, its tenancy's children, its deletion."""
    register_triggers(
        registry,
        HOSPITAL,
        changed=hospital_changed,
        resync=hospital_changed,
        interval=settings.resync_seconds,
    )
    # The indexes the Hospital watch feeds, from the kind's one event handler (a Kopf handler each cost more).
    on_watch_event(registry, HOSPITAL, hospital_seen)
    # A tenancy child changed: reconcile its Hospital unless the change is the echo of our own write.
    register_drift_handlers(
        registry,
        CHILD_KINDS,
        id_prefix="drift",
        labels={labels.MANAGED_BY: OPERATOR_NAME, labels.COMPONENT: labels.TENANCY, labels.HOSPITAL: kopf.PRESENT},
        owner_kind=KIND,
        owner_of=_hospital_of,
        reconcile=_repair,
        # The quota controller writes each quota's usage: status.quotaUsage follows, after changes.
        refresh_kinds=(RESOURCE_QUOTA,),
        refresh=_refresh_quota_usage,
    )
    # A Device deleted while a previous device CA is trusted may let it retire: from the Device's own event handler.
    on_watch_event(registry, DEVICE, device_gone)
    kopf.on.delete(GROUP, VERSION, PLURAL, id="hospital_deleted", registry=registry)(
        queued(HOSPITAL.kind.lower(), Priority.CHANGE, hospital_deleted)
    )


def hospital_changed(name: str, memo: kopf.Memo, logger: kopf.Logger, body: kopf.Body | None = None, **_: Any) -> None:
    # The resync (the safety net) has no body: it reads the Hospital; a create, update or resume starts from Kopf's.
    reconcile(get_context(memo), name, logger, body)


def _hospital_of(child: Manifest) -> str | None:
    return (child["metadata"].get("labels") or {}).get(labels.HOSPITAL) or None


def _repair(ctx: OperatorContext, memo: kopf.Memo, hospital: str, namespace: str | None, logger: Logger) -> None:
    reconcile(ctx, hospital, logger)


def _refresh_quota_usage(ctx: OperatorContext, hospital: str, quota: Manifest, logger: Logger) -> None:
    """The quota controller moved a quota's usage: copy it to ``status.quotaUsage`` (a GET and a PATCH).

    Nothing at all when the quota's latest write was to its status and the Hospital, as last watched,
    already shows that usage (:mod:`medcloud_operator.quotausage`). A whole reconcile (the dozen
    children read and compared) happens instead when the quota's latest
    write was not to its status (someone edited the object itself), when its spec no longer matches
    the Hospital's, or when the Hospital is not settled: then something more than usage moved.
    """
    used = (quota.get("status") or {}).get("used") or {}
    with handling(ctx, HOSPITAL, hospital):
        # Under the Hospital's lock: a reconcile that was writing its status has finished and recorded it.
        if last_write_was_status(quota, OPERATOR_NAME) and ctx.quota_usage.shows(hospital, used):
            # The quota controller recounted and found what the Hospital already shows (a new quota's zeros).
            metrics.SETTLED_SKIPS.labels(kind=KIND, trigger="quota-usage").inc()
            return
        body = ctx.kube.get(HOSPITAL, hospital)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        if not sharding.matches(ctx.settings.shard_selector, body["metadata"].get("labels")):
            return  # children are watched cluster-wide: another shard's quota is its replica's to copy
        if _usage_only(ctx, body, quota):
            previous = parse_status(HospitalStatus, body.get("status"))
            refreshed = previous.model_copy(update={"quota_usage": dict(used)})
            write_status(ctx.kube, HOSPITAL, hospital, previous, refreshed)
            ctx.quota_usage.record(hospital, refreshed.quota_usage)
            metrics.RECONCILE_TOTAL.labels(kind=KIND, result=metrics.RESULT_SUCCESS).inc()
            return
    reconcile(ctx, hospital, logger)


def _usage_only(ctx: OperatorContext, hospital: Manifest, quota: Manifest) -> bool:
    """Whether all that moved is the quota's usage: a settled Hospital, its quota as built, last written in status."""
    if quota["metadata"]["name"] != QUOTA_NAME or not is_settled(hospital, ctx.settings_fingerprint):
        return False
    if not last_write_was_status(quota, OPERATOR_NAME):
        return False
    try:
        desired = build_resource_quota(hospital["metadata"]["name"], HospitalSpec.model_validate(hospital["spec"]))
    except (ValidationError, KeyError):
        return False
    return not differences(desired, quota, RESOURCE_QUOTA)


async def hospital_seen(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Keep the institution-code index; a Hospital gone for good frees its code for a younger claimant."""
    ctx = get_context(memo)
    name = body["metadata"]["name"]
    if type != "DELETED":
        ctx.institution_codes.observe(body)
        ctx.quota_usage.observe(name, body.get("status"))
        return
    ctx.institution_codes.forget(name)
    ctx.quota_usage.forget(name)
    code = (body.get("spec") or {}).get("institutionCode") or ""
    for other in ctx.institution_codes.claimants(code):
        try:
            work = functools.partial(reconcile, ctx, other, logger)
            await ctx.queue.run(HOSPITAL.kind.lower(), Priority.CHANGE, work)
        except (kopf.PermanentError, kopf.TemporaryError) as exc:
            # Not this Hospital's event to retry: its own handlers and timer do.
            logger.info("Hospital %s: %s", other, exc)


async def device_gone(type: str | None, namespace: str | None, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """A Device deleted (re-enrolled) while its hospital still trusts a previous device CA may have held the last
    certificate of it: the Hospital is reconciled, which retires that CA if so and says it in its status. Any
    other Device event, or a hospital with one CA, costs nothing (one GET of the Hospital on a deletion)."""
    hospital = hospital_of_namespace(namespace) if type == "DELETED" and namespace is not None else None
    if hospital is None:
        return
    ctx = get_context(memo)

    def retire_if_overlapping() -> None:
        body = ctx.kube.get(HOSPITAL, hospital)
        if (((body or {}).get("status") or {}).get("deviceCa") or {}).get("previous") is not None:
            reconcile(ctx, hospital, logger)

    try:
        await ctx.queue.run(HOSPITAL.kind.lower(), Priority.CHANGE, retire_if_overlapping)
    except (kopf.PermanentError, kopf.TemporaryError) as exc:
        # The Hospital's own handlers and timer retry it.
        logger.info("Hospital %s: %s", hospital, exc)


def hospital_deleted(name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Offboard: refuse while RecordStores remain; else delete the namespace, wait for it, destroy the KEK."""
    ctx = get_context(memo)
    kube, settings = ctx.kube, ctx.settings
    with handling(ctx, HOSPITAL, name):
        body = kube.get(HOSPITAL, name)
        if body is None:
            return
        generation = body["metadata"].get("generation")
        previous = parse_status(HospitalStatus, body.get("status"))
        namespace = hospital_namespace(name)
        live_ns = kube.get(NAMESPACE, namespace)
        ours = live_ns is not None and (live_ns["metadata"].get("labels") or {}).get(labels.HOSPITAL) == name
        stores = _record_stores(ctx, namespace) if ours else []
        if stores:
            check = Check(
                ConditionStatus.FALSE,
                HospitalReason.RECORD_STORES_PRESENT,
                f"Deletion refused: {len(stores)} RecordStore(s) remain in namespace {namespace} "
                f"({', '.join(stores)}). Delete them first; the Hospital is removed once none remain.",
            )
            refused = terminating_status(previous, generation=generation, check=check, now=now_utc())
            if write_status(kube, HOSPITAL, name, previous, refused):
                events.post(body, events.WARNING, check.reason, check.message)
            metrics.RECONCILE_ERRORS.labels(kind=KIND, reason=check.reason).inc()
            metrics.RECONCILE_TOTAL.labels(kind=KIND, result=metrics.RESULT_REQUEUE).inc()
            metrics.PHASES.set(KIND, name, Phase.TERMINATING)
            raise kopf.TemporaryError(check.message, delay=settings.deletion_retry_seconds)

        check = Check(ConditionStatus.FALSE, Reason.DELETING, f"Removing namespace {namespace} and the tenant KEK.")
        deleting = terminating_status(previous, generation=generation, check=check, now=now_utc())
        if write_status(kube, HOSPITAL, name, previous, deleting):
            events.post(body, events.NORMAL, check.reason, check.message)
        metrics.PHASES.set(KIND, name, Phase.TERMINATING)
        _revoke_admin_cluster_access(ctx, name, logger)
        if ours and live_ns is not None:
            if not live_ns["metadata"].get("deletionTimestamp"):
                kube.delete(NAMESPACE, namespace)
                logger.info("Deleting namespace %s", namespace)
            metrics.RECONCILE_TOTAL.labels(kind=KIND, result=metrics.RESULT_REQUEUE).inc()
            # Namespace deletion is asynchronous (the namespace controller empties it first).
            raise kopf.TemporaryError(f"waiting for namespace {namespace} to be deleted", delay=2)
        if kube.delete(SECRET, kek.secret_name(name), settings.operator_namespace):
            events.post(body, events.NORMAL, "KEKDestroyed", f"KEK of {name} destroyed (crypto-shredded)")
            logger.info("KEK of %s destroyed", name)
        metrics.RECONCILE_TOTAL.labels(kind=KIND, result=metrics.RESULT_SUCCESS).inc()
        metrics.PHASES.forget(KIND, name)
        metrics.KEK_AGE.forget(name)
        ctx.own_writes.forget_namespace(namespace)


def _revoke_admin_cluster_access(ctx: OperatorContext, name: str, logger: Logger) -> None:
    """The admins' access to the Hospital object goes as the offboarding starts (their Role goes with the namespace).

    The owner references would have the garbage collector do it once the
    Hospital is gone; deleting them here does not wait for the namespace.
    """
    role = admin_cluster_role_name(name)
    for kind in (CLUSTER_ROLE_BINDING, CLUSTER_ROLE):
        if ctx.kube.delete(kind, role):
            logger.info("%s %s deleted", kind.kind, role)
        ctx.own_writes.forget(kind.kind, None, role)


def _record_stores(ctx: OperatorContext, namespace: str) -> list[str]:
    """Names of the RecordStores in ``namespace``; none when the RecordStore CRD is not installed."""
    try:
        items = ctx.kube.list(RECORD_STORE, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return []
        raise
    return sorted(item["metadata"]["name"] for item in items)
