"""RecordStore handlers: read the store, bring its bucket, credentials and keys to the spec, write status.

Triggers, all funnelled into one `reconcile`:

- the RecordStore is created, changed or found at startup (Kopf's create/update/resume);
- a timer every ``MEDCLOUD_RECORDSTORE_REFRESH_SECONDS``: usage is counted
  again, scheduled data-key rotations and hospital KEK rotations are picked
  up, and an unreachable MinIO is noticed (and, once back, recovered from).

A reconcile goes through three parts, each reported as a condition:

1. StorageAvailable: the bucket (object lock, versioning, default retention, quota, owner tags);
2. CredentialsReady: the Secret in the hospital namespace (the operator may write Secrets there through
   the tenancy's RoleBinding, never cluster-wide), then the MinIO policy and user it describes;
3. KeysReady: the data-key ring in the operator namespace, created once, re-wrapped when the
   hospital's KEK version moves on, given a new data-key version when the period passes or
   ``spec.keyRotation.rotateNow`` grows.

Deletion goes through a finalizer: the store's MinIO user and policy and its
credentials Secret are removed in any case; ``Retain`` keeps the bucket and
the key ring, ``Shred`` replaces the key ring with a tombstone holding no key
(crypto-shredding). Object lock keeps every version in the bucket until its
retention ends either way.

Key material never reaches a log line, an Event or the status: messages
name versions, never keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from medcloud.kube.client import HOSPITAL, RECORD_STORE, SECRET, Manifest
from medcloud.models import (
    GROUP,
    VERSION,
    ConditionStatus,
    DeletionPolicy,
    Phase,
    Reason,
    RecordStoreCondition,
    RecordStoreReason,
    RecordStoreSpec,
    RecordStoreStatus,
)
from medcloud.models.conditions import now_utc
from medcloud.tenancy import kek, keyring
from medcloud.tenancy.credentials import (
    secret_is_ours,
)
from medcloud.tenancy.store import InvalidStoreError, StoreNames
from medcloud_operator import events, metrics, storesecrets
from medcloud_operator.builders.hospital import OPERATOR_BINDING_NAME
from medcloud_operator.builders.recordstore import (
    LockRule,
    StoreFacts,
    bucket_policy,
    next_status,
    quota_bytes,
    terminating_status,
)
from medcloud_operator.context import OperatorContext, get_context
from medcloud_operator.handlers.common import (
    Logger,
    ReconcileError,
    announce,
    api_message,
    handling,
    is_steady,
    queued,
    raise_failure,
    reconcile_object,
    register_triggers,
    retry_on_conflict,
)
from medcloud_operator.kek import KekMissingError
from medcloud_operator.kube import Kube
from medcloud_operator.settings import OperatorSettings, StorageSettings
from medcloud_operator.status import Check, parse_status, write_status
from medcloud_operator.storage import (
    BucketConflictError,
    StorageError,
    StorageRejectedError,
    StorageUnavailableError,
)
from medcloud_operator.workqueue import Priority

KIND = "RecordStore"
PLURAL = "recordstores"
FORBIDDEN_RETRY_MAX_SECONDS = 60.0


# --------------------------------------------------------------------------- failures


class StoreReconcileError(ReconcileError):
    """A classified failure: the condition it breaks, why, and how it is retried."""

    def __init__(
        self,
        part: RecordStoreCondition,
        reason: Reason | RecordStoreReason,
        message: str,
        *,
        permanent: bool = False,
        delay: float = 10.0,
    ) -> None:
        super().__init__(reason, message, permanent=permanent, delay=delay)
        self.part = part


def backoff(retry: int, maximum: float) -> float:
    """1, 2, 4, ... seconds, capped: a MinIO that restarts is found again quickly, a dead one is not hammered."""
    return float(min(maximum, 2 ** min(retry, 16)))


def classify(exc: Exception, stage: RecordStoreCondition, retry: int, settings: StorageSettings) -> StoreReconcileError:
    """Turn what went wrong into a condition a person can act on, and a retry decision."""
    if isinstance(exc, StoreReconcileError):
        return exc
    if isinstance(exc, ValidationError | InvalidStoreError):
        return StoreReconcileError(stage, Reason.INVALID_SPEC, f"The spec cannot be realised: {exc}", permanent=True)
    if isinstance(exc, StorageUnavailableError):
        return StoreReconcileError(
            RecordStoreCondition.STORAGE_AVAILABLE,
            RecordStoreReason.STORAGE_UNAVAILABLE,
            f"MinIO is unavailable: {exc}",
            delay=backoff(retry, settings.recordstore_retry_max_seconds),
        )
    if isinstance(exc, BucketConflictError):
        return StoreReconcileError(
            RecordStoreCondition.STORAGE_AVAILABLE, RecordStoreReason.BUCKET_CONFLICT, str(exc), delay=300
        )
    if isinstance(exc, StorageRejectedError):
        return StoreReconcileError(
            RecordStoreCondition.STORAGE_AVAILABLE, RecordStoreReason.STORAGE_REJECTED, str(exc), delay=60
        )
    if isinstance(exc, keyring.KekVersionMissingError | KekMissingError):
        return StoreReconcileError(RecordStoreCondition.KEYS_READY, Reason.KEK_MISSING, str(exc), permanent=True)
    if isinstance(exc, kek.KekInvalidError):
        return StoreReconcileError(RecordStoreCondition.KEYS_READY, Reason.KEK_INVALID, str(exc), permanent=True)
    if isinstance(exc, storesecrets.SecretConflictError):
        return StoreReconcileError(
            RecordStoreCondition.CREDENTIALS_READY, RecordStoreReason.SECRET_CONFLICT, str(exc), delay=60
        )
    if isinstance(exc, storesecrets.RingShreddedError):
        return StoreReconcileError(
            RecordStoreCondition.KEYS_READY, RecordStoreReason.KEYS_SHREDDED, str(exc), permanent=True
        )
    if isinstance(exc, keyring.KeyRingMissingError):
        return StoreReconcileError(
            RecordStoreCondition.KEYS_READY, RecordStoreReason.KEYS_MISSING, str(exc), permanent=True
        )
    if isinstance(exc, keyring.KeyRingInvalidError):
        return StoreReconcileError(
            RecordStoreCondition.KEYS_READY,
            RecordStoreReason.KEYS_INVALID,
            f"{exc}; restore it from backup.",
            permanent=True,
        )
    if isinstance(exc, ApiException):
        message = api_message(exc)
        if exc.status == 403:
            forbidden = f"The operator is not allowed to do this (fix its RBAC): {message}"
            if stage is RecordStoreCondition.CREDENTIALS_READY:
                # Secrets in a tenant namespace come from the tenancy's RoleBinding, which
                # the Hospital writes and the API server's authorizer sees a moment later.
                forbidden += (
                    f". Secrets in a tenant namespace are granted by RoleBinding {OPERATOR_BINDING_NAME} there, "
                    "which the Hospital's tenancy writes: check that the Hospital is Ready."
                )
            # Backoff, not a fixed minute: a binding that was just written takes effect within a second.
            delay = backoff(retry, FORBIDDEN_RETRY_MAX_SECONDS)
            return StoreReconcileError(stage, Reason.FORBIDDEN, forbidden, delay=delay)
        failed = f"The API server failed a request ({exc.status}): {message}"
        return StoreReconcileError(stage, Reason.APPLY_FAILED, failed)
    if isinstance(exc, HTTPError | OSError):
        return StoreReconcileError(stage, Reason.APPLY_FAILED, f"The API server is unreachable: {exc}")
    raise exc


# --------------------------------------------------------------------------- the parts


@dataclass
class Outcome:
    """What one reconcile found and did."""

    stage: RecordStoreCondition = RecordStoreCondition.STORAGE_AVAILABLE
    """The part under way: where a failure that names no part of its own belongs."""
    checks: dict[RecordStoreCondition, Check] = field(default_factory=dict)
    changes: list[tuple[str, str]] = field(default_factory=list)
    """(Event reason, message) of everything that was written."""
    facts: StoreFacts = field(default_factory=StoreFacts)


def _check_hospital(
    kube: Kube, names: StoreNames, operator_namespace: str, recheck_seconds: float
) -> tuple[Manifest, kek.Kek]:
    """The hospital's KEK Secret and current KEK; the Hospital must exist and have issued one."""
    hospital = kube.get(HOSPITAL, names.hospital)
    if hospital is None:
        # Failed, and looked at again only as often as every store is refreshed: a Hospital
        # that does not exist seldom appears by itself, and a tight retry would only make noise.
        raise StoreReconcileError(
            RecordStoreCondition.KEYS_READY,
            RecordStoreReason.HOSPITAL_MISSING,
            f"No Hospital {names.hospital} exists for namespace {names.namespace}, so this store has no "
            f"key-encryption key. Create Hospital {names.hospital}, or create the RecordStore in its "
            f"hospital's namespace; checked again every {recheck_seconds:g} s.",
            delay=recheck_seconds,
        )
    if not ((hospital.get("status") or {}).get("kek") or {}).get("version"):
        raise StoreReconcileError(
            RecordStoreCondition.KEYS_READY,
            RecordStoreReason.HOSPITAL_NOT_READY,
            f"Hospital {names.hospital} has no key-encryption key yet.",
            delay=5,
        )
    secret = keyring.load_kek_secret(kube, names.hospital, operator_namespace)
    return secret, kek.parse_secret(secret)


def _reconcile_parts(
    ctx: OperatorContext,
    body: Manifest,
    previous: RecordStoreStatus,
    outcome: Outcome,
    *,
    refresh_usage: bool,
) -> None:
    """The three parts in order; raises on the first that fails, after recording those that passed."""
    kube, operator_namespace = ctx.kube, ctx.settings.operator_namespace
    meta = body["metadata"]
    spec = RecordStoreSpec.model_validate(body.get("spec") or {})
    names = StoreNames.of(meta["namespace"], meta["name"])
    outcome.stage = RecordStoreCondition.KEYS_READY
    kek_secret, current_kek = _check_hospital(kube, names, operator_namespace, ctx.settings.recordstore_refresh_seconds)

    outcome.stage = RecordStoreCondition.STORAGE_AVAILABLE
    storage = ctx.storage
    if storage is None:
        raise StoreReconcileError(
            RecordStoreCondition.STORAGE_AVAILABLE,
            RecordStoreReason.STORAGE_NOT_CONFIGURED,
            "The operator has no MinIO to provision on: set MEDCLOUD_MINIO_ENDPOINT, "
            "MEDCLOUD_MINIO_ACCESS_KEY and MEDCLOUD_MINIO_SECRET_KEY.",
            delay=300,
        )
    lock = LockRule.of(spec.retention)
    for change in storage.ensure_bucket(names, lock, quota_bytes(spec.quota)):
        outcome.changes.append(("BucketProvisioned", change))
    outcome.checks[RecordStoreCondition.STORAGE_AVAILABLE] = Check(
        ConditionStatus.TRUE,
        Reason.RECONCILED,
        f"Bucket {names.bucket} on {storage.public_endpoint.url}: versioned, object lock {lock.mode} "
        f"{lock.duration} {lock.unit.lower()}, quota {spec.quota}.",
    )
    outcome.facts = StoreFacts(
        bucket=names.bucket, endpoint=storage.public_endpoint.url, secret=names.secret, retention=spec.retention
    )

    outcome.stage = RecordStoreCondition.CREDENTIALS_READY
    secret_key, changes = storesecrets.ensure_credentials(kube, names, storage, ctx.settings)
    outcome.changes += changes
    for change in storage.ensure_access(names, bucket_policy(names.bucket), secret_key):
        outcome.changes.append(("AccessProvisioned", change))
    outcome.checks[RecordStoreCondition.CREDENTIALS_READY] = Check(
        ConditionStatus.TRUE,
        Reason.RECONCILED,
        f"User {names.user} may use bucket {names.bucket} only; its credentials are in Secret {names.secret}.",
    )

    outcome.stage = RecordStoreCondition.KEYS_READY
    now = now_utc()
    ring_state = storesecrets.ensure_ring(kube, names, operator_namespace, kek_secret, current_kek, spec, previous, now)
    outcome.changes += ring_state.changes
    ring = ring_state.ring
    current_entry = next(e for e in ring.entries if e.version == ring.current_version)
    outcome.checks[RecordStoreCondition.KEYS_READY] = Check(
        ConditionStatus.TRUE,
        Reason.RECONCILED,
        f"Data-key version {ring.current_version} is current ({len(ring.versions)} in the ring), "
        f"wrapped by KEK version {ring.kek_version}.",
    )
    usage = previous.usage
    if refresh_usage or usage is None or ring_state.rotated or previous.key_version != ring.current_version:
        outcome.stage = RecordStoreCondition.STORAGE_AVAILABLE
        usage = storage.usage(names.bucket, ring.current_version)
    outcome.facts = StoreFacts(
        bucket=names.bucket,
        endpoint=storage.public_endpoint.url,
        secret=names.secret,
        retention=spec.retention,
        key_version=ring.current_version,
        kek_version=ring.kek_version,
        key_rotated_at=current_entry.created_at,
        observed_rotate_now=ring_state.observed_rotate_now,
        usage=usage,
    )


# --------------------------------------------------------------------------- reconcile


def reconcile(
    ctx: OperatorContext,
    namespace: str,
    name: str,
    logger: Logger,
    *,
    refresh_usage: bool,
    retry: int,
) -> None:
    """Bring one RecordStore to its spec and report it; raises Kopf errors for retries."""
    reconcile_object(
        ctx,
        RECORD_STORE,
        name,
        namespace,
        lambda body: _reconcile(ctx, body, logger, refresh_usage=refresh_usage, retry=retry),
    )


def _reconcile(ctx: OperatorContext, body: Manifest, logger: Logger, *, refresh_usage: bool, retry: int) -> None:
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    previous = parse_status(RecordStoreStatus, body.get("status"))
    outcome = Outcome()
    failure: StoreReconcileError | None = None
    try:
        _reconcile_parts(ctx, body, previous, outcome, refresh_usage=refresh_usage)
    except ApiException as exc:
        retry_on_conflict(exc, "an object")
        failure = classify(exc, outcome.stage, retry, ctx.settings)
    except Exception as exc:
        failure = classify(exc, outcome.stage, retry, ctx.settings)

    if failure is not None:
        outcome.checks[failure.part] = failure.check
    new = next_status(
        previous,
        generation=generation,
        checks=outcome.checks,
        facts=outcome.facts,
        spec_failed=failure is not None and failure.reason in (Reason.INVALID_SPEC, RecordStoreReason.HOSPITAL_MISSING),
        now=now_utc(),
    )
    _report(body, previous, generation, outcome, logger)
    written = write_status(ctx.kube, RECORD_STORE, name, previous, new, namespace)
    assert new.phase is not None
    metrics.PHASES.set(KIND, f"{namespace}/{name}", new.phase)
    if failure is not None:
        raise_failure(body, failure, written, logger)
    if written and new.phase is not previous.phase:
        ready = new.condition(RecordStoreCondition.READY)
        events.post(body, events.NORMAL, new.phase.value, ready.message if ready else new.phase.value)
        logger.info("RecordStore %s/%s is %s", namespace, name, new.phase)


def _report(
    body: Manifest, previous: RecordStoreStatus, generation: int | None, outcome: Outcome, logger: Logger
) -> None:
    """One Event per thing written. A write while the spec stood still is drift being repaired."""
    steady = is_steady(previous, generation)
    for reason, message in outcome.changes:
        if steady and reason in ("BucketProvisioned", "AccessProvisioned", "CredentialsRepaired"):
            metrics.DRIFT_REPAIRS.labels(kind=KIND).inc()
            reason = "DriftRepaired"
        announce(body, reason, message, logger)


# --------------------------------------------------------------------------- handlers


def recordstore_changed(
    namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, retry: int, **_: Any
) -> None:
    assert namespace is not None  # RecordStores are namespaced
    reconcile(get_context(memo), namespace, name, logger, refresh_usage=False, retry=retry)


def recordstore_refresh(namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    assert namespace is not None
    retry = int(kwargs.get("retry") or 0)
    reconcile(get_context(memo), namespace, name, logger, refresh_usage=True, retry=retry)


def recordstore_deleted(
    namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, retry: int, **_: Any
) -> None:
    """Revoke the store's access; keep (Retain) or crypto-shred (Shred) its keys; the bucket stays."""
    assert namespace is not None
    ctx = get_context(memo)
    kube = ctx.kube
    with handling(ctx, RECORD_STORE, name, namespace):
        body = kube.get(RECORD_STORE, name, namespace)
        if body is None:
            return
        try:
            names = StoreNames.of(namespace, name)
        except InvalidStoreError:
            # Never provisioned anything: a store outside a hospital namespace only ever failed.
            metrics.PHASES.forget(KIND, f"{namespace}/{name}")
            return
        previous = parse_status(RecordStoreStatus, body.get("status"))
        if previous.bucket is None and kube.get(HOSPITAL, names.hospital) is None:
            # Never provisioned anything (its Hospital never existed), and without that Hospital
            # the operator holds no access to the namespace's Secrets: nothing to revoke.
            metrics.PHASES.forget(KIND, f"{namespace}/{name}")
            return
        generation = body["metadata"].get("generation")
        try:
            policy = RecordStoreSpec.model_validate(body.get("spec") or {}).deletion_policy
        except ValidationError:
            policy = DeletionPolicy.RETAIN
        keeps = "the key ring is kept" if policy is DeletionPolicy.RETAIN else "the keys are crypto-shredded"
        message = f"Deleting ({policy.value}): revoking access to bucket {names.bucket}; {keeps}."
        terminating = terminating_status(previous, generation=generation, message=message, now=now_utc())
        write_status(kube, RECORD_STORE, name, previous, terminating, namespace)
        metrics.PHASES.set(KIND, f"{namespace}/{name}", Phase.TERMINATING)

        revoked = _revoke(ctx, names, previous, retry)
        live = kube.get(SECRET, names.secret, namespace)
        if live is not None and secret_is_ours(live, names):
            kube.delete(SECRET, names.secret, namespace)
            revoked.append(f"Secret {names.secret} deleted")
        for change in revoked:
            logger.info("%s", change)

        if policy is DeletionPolicy.SHRED:
            shredded = storesecrets.shred(kube, names, ctx.settings.operator_namespace)
            if shredded:
                text = (
                    f"Keys of RecordStore {namespace}/{name} destroyed (crypto-shredding): its records in bucket "
                    f"{names.bucket} can never be decrypted again. Object lock keeps the ciphertext until each "
                    "version's retention ends."
                )
                announce(body, "KeysShredded", text, logger, warning=True)
        else:
            text = (
                f"Access revoked; bucket {names.bucket} and the key ring are retained (deletionPolicy Retain). "
                "A RecordStore of the same name in this namespace takes them over again."
            )
            announce(body, "Retained", text, logger)
        metrics.RECONCILE_TOTAL.labels(kind=KIND, result=metrics.RESULT_SUCCESS).inc()
        metrics.PHASES.forget(KIND, f"{namespace}/{name}")


def _revoke(ctx: OperatorContext, names: StoreNames, previous: RecordStoreStatus, retry: int) -> list[str]:
    if ctx.storage is None:
        if previous.bucket is not None:
            raise kopf.TemporaryError(
                f"cannot revoke user {names.user}: the operator has no MinIO configured", delay=60
            )
        return []
    try:
        return ctx.storage.revoke_access(names)
    except StorageError as exc:
        delay = backoff(retry, ctx.settings.recordstore_retry_max_seconds)
        raise kopf.TemporaryError(f"cannot revoke user {names.user} yet: {exc}", delay=delay) from exc


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    """The RecordStore's triggers: its own events, the refresh timer, its deletion."""
    register_triggers(
        registry,
        RECORD_STORE,
        changed=recordstore_changed,
        resync=recordstore_refresh,
        interval=settings.recordstore_refresh_seconds,
        resync_id="recordstore_refresh",
        # The refresh re-counts usage and picks up key rotations: it always has work to do.
        safety_net=False,
    )
    kopf.on.delete(GROUP, VERSION, PLURAL, id="recordstore_deleted", registry=registry)(
        queued(RECORD_STORE.kind.lower(), Priority.CHANGE, recordstore_deleted)
    )
