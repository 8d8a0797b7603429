"""A hospital's tenant device CA and its trust Secret (CA certificate + CRL): making and keeping them.

The operator's side of :mod:`medcloud.tenancy.deviceca`. The CA is made once,
on first need, and never rewritten (its Secret is immutable); a lost CA Secret
is made again, which invalidates every device certificate (they must
re-enrol): said in the Event the handler posts. The trust Secret is signed
again when the revoked serials change or its nextUpdate is near.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubernetes.client.exceptions import ApiException

from medcloud.kube.client import DEVICE, SECRET, Kube, Manifest
from medcloud.tenancy import deviceca
from medcloud_operator.builders import device as builder
from medcloud_operator.builders import devicegateway as gateway_builder
from medcloud_operator.settings import WorkloadSettings


@dataclass(frozen=True)
class Trust:
    ca: deviceca.TenantCA
    created_ca: bool
    crl_signed: bool


def ensure_ca(kube: Kube, namespace: str, hospital: str, now: dt.datetime) -> tuple[deviceca.TenantCA, bool]:
    """The hospital's CA, made if there is none; True when it was made now."""
    live = kube.get(SECRET, deviceca.CA_SECRET, namespace)
    if live is not None:
        return builder.read_ca(live), False
    ca = deviceca.new_ca(hospital, now=now)
    try:
        kube.create(builder.ca_secret(namespace, hospital, ca))
    except ApiException as exc:
        if exc.status != 409:
            raise
        # Another reconcile made it first: use that one, never ours.
        raced = kube.get(SECRET, deviceca.CA_SECRET, namespace)
        if raced is None:
            raise
        return builder.read_ca(raced), False
    return ca, True


def ensure_trust(kube: Kube, namespace: str, hospital: str, now: dt.datetime | None = None) -> Trust:
    """CA made if missing, and the trust Secret's CRL signed again if due; writes nothing when neither is needed."""
    moment = now or dt.datetime.now(dt.UTC)
    ca, created = ensure_ca(kube, namespace, hospital, moment)
    wanted = builder.revocations(kube.list(DEVICE, namespace))
    live = kube.get(SECRET, deviceca.TRUST_SECRET, namespace)
    if not builder.crl_due(live, ca.cert_pem, wanted, moment):
        return Trust(ca, created, False)
    desired = builder.trust_secret(namespace, hospital, ca, live, wanted, moment)
    if live is None:
        kube.create(desired)
    else:
        # resourceVersion: a concurrent signer's CRL (same number) is not overwritten; the 409 retries.
        desired["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        kube.replace(desired)
    return Trust(ca, created, True)


def ensure_serving(kube: Kube, gateway: Manifest, ca: deviceca.TenantCA, settings: WorkloadSettings) -> bytes:
    """The gateway's serving certificate (PEM), issued (again) by the tenant CA when due and kept in its Secret."""
    meta = gateway["metadata"]
    names = gateway_builder.serving_names(meta["name"], meta["namespace"])
    return _ensure_leaf(
        kube,
        gateway,
        deviceca.serving_secret_name(gateway_builder.child_name(meta["name"])),
        due=lambda current, now: deviceca.serving_due(current, ca.cert_pem, names, now),
        issue=lambda now: gateway_builder.build_serving_secret(
            gateway, deviceca.sign_server(ca, names, now=now), settings
        ),
    )


def ensure_broker_client(
    kube: Kube, gateway: Manifest, broker_ca: deviceca.TenantCA, settings: WorkloadSettings
) -> bytes:
    """The gateway's MQTT client certificate (PEM), issued (again) by the broker's client CA when due."""
    meta = gateway["metadata"]
    identity = gateway_builder.broker_identity(meta["name"], meta["namespace"])
    return _ensure_leaf(
        kube,
        gateway,
        deviceca.broker_secret_name(gateway_builder.child_name(meta["name"])),
        due=lambda current, now: deviceca.client_due(current, broker_ca.cert_pem, identity, now),
        issue=lambda now: gateway_builder.build_broker_secret(
            gateway, deviceca.sign_client(broker_ca, identity, now=now), broker_ca.cert_pem, settings
        ),
    )


def _ensure_leaf(
    kube: Kube,
    gateway: Manifest,
    name: str,
    *,
    due: Callable[[bytes | None, dt.datetime], bool],
    issue: Callable[[dt.datetime], Manifest],
) -> bytes:
    """A certificate Secret of the gateway written only when ``due`` says so; the certificate in force returned."""
    namespace = gateway["metadata"]["namespace"]
    live = kube.get(SECRET, name, namespace)
    current = base64.b64decode((live or {}).get("data", {}).get(deviceca.TLS_CERT_KEY, "")) or None
    now = dt.datetime.now(dt.UTC)
    if current is not None and not due(current, now):
        return current
    desired = issue(now)
    if live is None:
        kube.create(desired)
    else:
        # resourceVersion: a concurrent reconcile's certificate is not overwritten; the 409 retries.
        desired["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        kube.replace(desired)
    return base64.b64decode(desired["data"][deviceca.TLS_CERT_KEY])


def read_broker_ca(settings: WorkloadSettings) -> deviceca.TenantCA | None:
    """The CA the broker checks client certificates with, from the files the settings name (None: not configured)."""
    if settings.broker_client_ca_file is None or settings.broker_client_ca_key_file is None:
        return None
    return deviceca.TenantCA(
        Path(settings.broker_client_ca_file).read_bytes(), Path(settings.broker_client_ca_key_file).read_bytes()
    )
