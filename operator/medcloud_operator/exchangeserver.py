"""Provisioning a Consortium's exchange: its audit bucket and user on MinIO, its Secrets, its workload.

The reads and writes; what is written comes from ``builders/exchangeserver.py``. Each step
reads first and writes only what differs, so a reconcile with nothing changed writes nothing.
Keys are generated here exactly once (when their Secret is absent) and never logged: the
messages name Secrets and buckets, not their contents.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from medcloud.kube.client import SECRET, Manifest
from medcloud.models import (
    ConditionStatus,
    ConsortiumCondition,
    ConsortiumReason,
    ConsortiumSpec,
    ConsortiumStatus,
    Phase,
)
from medcloud.models.conditions import set_condition
from medcloud.tenancy.store import StoreNames
from medcloud_operator import exchangeprobe
from medcloud_operator.apply import Applied, apply
from medcloud_operator.builders import exchangeserver as build
from medcloud_operator.builders.exchangeserver import AUDIT_SECRET_KEY, Database, ExchangeNames
from medcloud_operator.context import OperatorContext
from medcloud_operator.status import Check
from medcloud_operator.storage import StorageError, StorageUnavailableError

AUDIT_STORE = "exchange-audit"


@dataclass
class ExchangeOutcome:
    """What provisioning found: the ExchangeReady check, where it answers, and what was written."""

    check: Check
    endpoint: str | None = None
    audit_bucket: str | None = None
    applied: list[Applied] = field(default_factory=list)
    retry: bool = False
    """A part that heals by itself (MinIO) failed: the handler retries after writing the status."""


def _secret_value(secret: Manifest | None, key: str) -> str | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


def _audit_access(ctx: OperatorContext, body: Manifest, names: ExchangeNames, applied: list[Applied]) -> None:
    """The audit bucket, the Secret with the exchange's MinIO credentials (made once), and that user."""
    assert ctx.storage is not None
    ctx.storage.ensure_audit_bucket(names.audit_bucket, names.consortium, ctx.settings.exchange_audit_retention_days)
    live = ctx.kube.get(SECRET, names.audit_secret, names.namespace)
    secret_key = _secret_value(live, AUDIT_SECRET_KEY)
    if secret_key is None:
        secret_key = secrets.token_urlsafe(32)
        applied.append(apply(ctx.kube, build.build_audit_secret(body, names, secret_key), ctx.own_writes))
    store = StoreNames(
        namespace=names.namespace,
        store=AUDIT_STORE,
        hospital="",
        bucket=names.audit_bucket,
        user=names.audit_user,
        policy=names.audit_policy,
        secret=names.audit_secret,
    )
    ctx.storage.ensure_access(store, build.audit_policy(names.audit_bucket), secret_key)


def provision(
    ctx: OperatorContext, body: Manifest, spec: ConsortiumSpec, previous: ConsortiumStatus
) -> ExchangeOutcome:
    """Everything the Consortium's exchange runs on; the Deployment only once its database Secret exists."""
    settings = ctx.settings
    names = ExchangeNames.of(body["metadata"]["name"], settings.operator_namespace)
    if ctx.storage is None or not settings.key_service_url:
        missing = "MinIO (MEDCLOUD_MINIO_*)" if ctx.storage is None else "the key service (MEDCLOUD_KEY_SERVICE_URL)"
        message = f"No exchange is deployed: the operator is not configured with {missing}."
        return ExchangeOutcome(Check(ConditionStatus.FALSE, ConsortiumReason.EXCHANGE_NOT_CONFIGURED, message))
    applied: list[Applied] = []
    try:
        _audit_access(ctx, body, names, applied)
    except StorageError as exc:
        reason = ConsortiumReason.EXCHANGE_UNAVAILABLE
        check = Check(ConditionStatus.FALSE, reason, f"The exchange's audit bucket cannot be provisioned: {exc}")
        return ExchangeOutcome(check, applied=applied, retry=isinstance(exc, StorageUnavailableError))
    if ctx.kube.get(SECRET, names.blind_index_secret, names.namespace) is None:
        key = build.build_blind_index_secret(body, names, os.urandom(32))
        applied.append(apply(ctx.kube, key, ctx.own_writes))
    database = Database(
        build.database_secret_name(settings.exchange_database_secret, names.consortium, spec.exchange.database_secret),
        spec.exchange.database_secret_key,
    )
    if _secret_value(ctx.kube.get(SECRET, database.secret, names.namespace), database.key) is None:
        message = (
            f"Secret {names.namespace}/{database.secret} with key {database.key} (the exchange's PostgreSQL URI) "
            "does not exist: create it (docs/install.md, CloudNativePG) or name another in "
            "spec.exchange.databaseSecret."
        )
        return ExchangeOutcome(
            Check(ConditionStatus.FALSE, ConsortiumReason.DATABASE_SECRET_MISSING, message),
            audit_bucket=names.audit_bucket,
            applied=applied,
        )
    assert ctx.storage is not None
    assert settings.key_service_url is not None
    endpoint = ctx.storage.public_endpoint
    manifests = build.build_exchange_server(
        body, names, database, settings, endpoint.address, endpoint.secure, settings.key_service_url
    )
    results = [apply(ctx.kube, manifest, ctx.own_writes) for manifest in manifests]
    deployment = next(r for r in results if r.kind == "Deployment")
    check = build.judge_exchange(
        deployment.obj,
        previous.condition(ConsortiumCondition.EXCHANGE_READY),
        written=deployment.changed,
        unready=exchangeprobe.unready_because(settings, names.consortium),
    )
    return ExchangeOutcome(check, names.endpoint(), names.audit_bucket, applied + results)


def with_exchange(
    status: ConsortiumStatus, outcome: ExchangeOutcome, generation: int | None, now: datetime
) -> ConsortiumStatus:
    """The status with ExchangeReady, the endpoint and bucket; Degraded while a serving exchange is unavailable."""
    check = outcome.check
    conditions = set_condition(
        status.conditions,
        ConsortiumCondition.EXCHANGE_READY,
        check.status,
        check.reason,
        check.message,
        generation,
        now,
    )
    phase = status.phase
    if check.reason == ConsortiumReason.EXCHANGE_UNAVAILABLE and phase is Phase.READY:
        phase = Phase.DEGRADED
    exchange = status.exchange
    if exchange is not None:
        exchange = exchange.model_copy(update={"endpoint": outcome.endpoint, "audit_bucket": outcome.audit_bucket})
    return status.model_copy(update={"conditions": conditions, "phase": phase, "exchange": exchange})
