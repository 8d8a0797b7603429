"""Keeping the platform broker's trust bundle (every hospital's device CA and CRL) and ACL current.

The operator's side of :mod:`medcloud.tenancy.mqtt`: one ConfigMap in the
operator's namespace, rebuilt from every Hospital's trust Secret (read by name,
``hospital-<name>``/``medcloud-device-trust``: the operator lists no Secrets)
and the MQTT DeviceGateways, written only when it changed. Called when a
hospital's CRL is signed again (a revocation reaches the bundle in the same
reconcile) and on every DeviceGateway reconcile (a new gateway or hospital).
Nothing is done when the operator does not know the broker's client CA.
"""

from __future__ import annotations

import datetime as dt

from medcloud.kube.client import CONFIG_MAP, DEVICE_GATEWAY, HOSPITAL, SECRET, Kube, Manifest
from medcloud.models.common import hospital_namespace
from medcloud.tenancy import deviceca, devicecrl, mqtt
from medcloud_operator.builders import brokertrust as builder
from medcloud_operator.deviceca import read_broker_ca
from medcloud_operator.settings import WorkloadSettings


def ensure_gateway_in_broker_trust(
    kube: Kube, settings: WorkloadSettings, gateway: Manifest, now: dt.datetime | None = None
) -> bool:
    """A DeviceGateway's reconcile: the bundle rebuilt (every hospital read) only when it lacks this gateway's
    grant, its hospital's CA or CRL, or a fresh broker CA CRL; otherwise two reads, whatever the hospital count.
    True if it was written."""
    broker_ca = read_broker_ca(settings)
    if broker_ca is None:
        return False
    namespace = gateway["metadata"]["namespace"]
    moment = now or dt.datetime.now(dt.UTC)
    live = kube.get(CONFIG_MAP, mqtt.TRUST_CONFIGMAP, settings.operator_namespace)
    secret = kube.get(SECRET, deviceca.TRUST_SECRET, namespace)
    trust = builder.hospital_trust(secret) if secret is not None else None
    if builder.bundle_holds(live, broker_ca.cert_pem, trust, builder.gateway_grants([gateway]), moment):
        return False
    return ensure_broker_trust(kube, settings, settings.operator_namespace, namespace, moment)


def ensure_broker_trust(
    kube: Kube, settings: WorkloadSettings, namespace: str, hospital_ns: str | None, now: dt.datetime | None = None
) -> bool:
    """The broker's trust ConfigMap brought up to date; True if it was written.

    ``hospital_ns`` (the tenant namespace being reconciled, if any) is taken even before its Hospital is listed.
    """
    broker_ca = read_broker_ca(settings)
    if broker_ca is None:
        return False
    moment = now or dt.datetime.now(dt.UTC)
    hospitals = []
    tenants = {hospital_namespace(h["metadata"]["name"]) for h in kube.list(HOSPITAL)}
    if hospital_ns is not None:
        tenants.add(hospital_ns)
    for namespace_of_hospital in sorted(tenants):
        secret = kube.get(SECRET, deviceca.TRUST_SECRET, namespace_of_hospital)
        trust = builder.hospital_trust(secret) if secret is not None else None
        if trust is not None:
            hospitals.append(trust)
    # One LIST, not one per hospital; the grants are the same ones withdraw_outlived_grants compares with.
    gateways = kube.list_every_namespace(DEVICE_GATEWAY)
    live = kube.get(CONFIG_MAP, mqtt.TRUST_CONFIGMAP, namespace)
    platform_crl = builder.platform_crl_in_force(live, broker_ca.cert_pem, moment) or devicecrl.build_crl(
        broker_ca.cert_pem,
        broker_ca.key_pem,
        [],
        now=moment,
        number=int(moment.timestamp()),
        validity=builder.PLATFORM_CRL_VALIDITY,
    )
    grants = builder.gateway_grants(gateways)
    desired = builder.trust_configmap(namespace, hospitals, broker_ca.cert_pem, platform_crl, grants)
    if not builder.trust_due(live, desired):
        return False
    if live is None:
        kube.create(desired)
    else:
        # resourceVersion: a concurrent writer's bundle is not overwritten; the 409 retries.
        desired["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        kube.replace(desired)
    return True


def withdraw_outlived_grants(kube: Kube, settings: WorkloadSettings) -> set[str]:
    """The bundle rebuilt if its ACL grants an identity whose MQTT DeviceGateway is gone; those identities.

    Two reads when nothing outlived its gateway (the ConfigMap, one LIST of the gateways), whatever the count.
    """
    if read_broker_ca(settings) is None:
        return set()
    live = kube.get(CONFIG_MAP, mqtt.TRUST_CONFIGMAP, settings.operator_namespace)
    if live is None:
        return set()
    outlived = builder.outlived_grants(live, kube.list_every_namespace(DEVICE_GATEWAY))
    if outlived:
        ensure_broker_trust(kube, settings, settings.operator_namespace, None)
    return outlived
