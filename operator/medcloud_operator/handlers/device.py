"""Device handlers: sign an approved device's CSR with the hospital's CA; revoke it into the CRL.

Triggers: the Device created, changed or found at startup, and a resync timer
(which also signs a fresh CRL before the current one's nextUpdate). One
reconcile: make the CA if the hospital has none, move the Device's status on
(:func:`medcloud_operator.builders.device.next_status`), then bring the
trust Secret's CRL up to date. A revocation reaches the CRL Secret in the
same reconcile that marks the Device Revoked.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from medcloud.kube.client import DEVICE, Kube, Manifest
from medcloud.models import DeviceStatus
from medcloud.models.conditions import Reason
from medcloud.tenancy import deviceca
from medcloud_operator import events
from medcloud_operator.brokertrust import ensure_broker_trust
from medcloud_operator.builders import device as builder
from medcloud_operator.builders.workload import InvalidWorkloadError, hospital_of
from medcloud_operator.context import get_context
from medcloud_operator.deviceca import ensure_trust
from medcloud_operator.handlers.common import (
    Logger,
    ReconcileError,
    classify_request,
    raise_failure,
    reconcile_object,
    register_triggers,
)
from medcloud_operator.settings import OperatorSettings, WorkloadSettings
from medcloud_operator.status import merge_patch

log = logging.getLogger(__name__)


def _dump(status: DeviceStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def reconcile_device(
    kube: Kube,
    body: Manifest,
    logger: Logger = log,
    now: dt.datetime | None = None,
    settings: WorkloadSettings | None = None,
) -> bool:
    """One Device brought to its next state; True if its status was written. A second call writes nothing.

    With ``settings`` (the operator's), a CRL signed again also reaches the platform broker's trust bundle.
    """
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    moment = now or dt.datetime.now(dt.UTC)
    hospital = hospital_of(namespace)
    trust = ensure_trust(kube, namespace, hospital, moment)
    if settings is not None and trust.crl_signed:
        ensure_broker_trust(kube, settings, settings.operator_namespace, namespace, moment)
    if trust.created_ca:
        events.post(body, events.NORMAL, "DeviceCACreated", f"made the device CA of hospital {hospital}")
    if trust.retired is not None:
        message = f"device CA {deviceca.ca_name(trust.retired.cert_pem)} retired: no device certificate of it remains"
        events.post(body, events.NORMAL, "DeviceCARetired", message)
    previous = DeviceStatus.model_validate(body.get("status") or {})
    new = builder.next_status(body, previous, trust.ca, moment)
    patch = merge_patch(_dump(previous), _dump(new))
    if not patch:
        return False
    kube.merge_patch(DEVICE, name, {"status": patch}, namespace, subresource="status")
    if new.state != previous.state:
        logger.info("Device %s/%s: %s (%s)", namespace, name, new.state, new.message)
        events.post(body, events.NORMAL, f"Device{new.state}", new.message or "")
    # The Device is Revoked in the API server now: the CRL must list it before this reconcile ends, and the
    # platform broker's bundle with it.
    resigned = new.revoked_at != previous.revoked_at and ensure_trust(kube, namespace, hospital, moment).crl_signed
    if resigned and settings is not None:
        ensure_broker_trust(kube, settings, settings.operator_namespace, namespace, moment)
    return True


def _reconcile(kube: Kube, body: Manifest, logger: Logger, settings: WorkloadSettings) -> None:
    try:
        reconcile_device(kube, body, logger, settings=settings)
    except InvalidWorkloadError as exc:
        raise_failure(body, ReconcileError(Reason.INVALID_SPEC, str(exc), permanent=True), False, logger)
    except (ApiException, HTTPError, OSError) as exc:
        failure = classify_request(exc)
        assert failure is not None
        raise_failure(body, failure, False, logger)


def device_changed(name: str, namespace: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    ctx = get_context(memo)
    reconcile_object(ctx, DEVICE, name, namespace, lambda body: _reconcile(ctx.kube, body, logger, ctx.settings))


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    register_triggers(registry, DEVICE, changed=device_changed, resync=device_changed, interval=settings.resync_seconds)
