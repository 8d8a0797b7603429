"""DeviceGateway handlers: run the gateway in its hospital's namespace, writing into its RecordStore.

The triggers are those of every workload (``handlers.workload.register``):

- the DeviceGateway is created, changed or found at startup (Kopf's create/update/resume);
- its ServiceAccount, RoleBinding, Deployment or Service changes or disappears: drift repair, and rollout progress;
- its RecordStore or the tenant's LimitRange appears, changes or goes away
  (an index of gateways by what they read; no listing);
- a resync timer, as a safety net.

Children carry an owner reference to the gateway: deleting it lets the
garbage collector remove them, so there is no deletion handler (Kopf's
finalizer, there because of the presence timer, is simply removed). What the
garbage collector cannot remove is the gateway's grant in the platform
broker's ACL (a ConfigMap of the operator's namespace, not a child): the
DELETED event rebuilds the bundle without it, so the deleted gateway's
identity reads no hospital's readings from the next sync on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from medcloud.kube.client import (
    DEPLOYMENT,
    DEVICE,
    DEVICE_GATEWAY,
    ENDPOINT_SLICE,
    LIMIT_RANGE,
    NETWORK_POLICY,
    RECORD_STORE,
    ROLE_BINDING,
    SERVICE,
    SERVICE_ACCOUNT,
    Manifest,
)
from medcloud.models import (
    DeviceCounts,
    DeviceGatewaySpec,
    DeviceGatewayStatus,
    DeviceProtocol,
    DeviceState,
    DeviceStatus,
)
from medcloud.tenancy import labels
from medcloud_operator import metrics, presence
from medcloud_operator.brokertrust import ensure_gateway_in_broker_trust
from medcloud_operator.builders import device as device_builder
from medcloud_operator.builders import devicegateway as builder
from medcloud_operator.builders.hospital import LIMITS_NAME
from medcloud_operator.builders.workload import Ceiling, Findings, credentials_secret, hospital_of, judge_dependencies
from medcloud_operator.context import OperatorContext, get_context
from medcloud_operator.deviceca import ensure_broker_client, ensure_serving, ensure_trust, read_broker_ca
from medcloud_operator.handlers import workload
from medcloud_operator.handlers.common import Logger
from medcloud_operator.handlers.workload import Plan, Workload
from medcloud_operator.kube import Kube
from medcloud_operator.settings import OperatorSettings, WorkloadSettings

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
"""The label tying an EndpointSlice to its Service (set by the EndpointSlice controller)."""


@dataclass(frozen=True)
class GatewayPlan(Plan):
    endpoints: dict[str, str]
    devices: DeviceCounts


class GatewayWorkload(Workload[GatewayPlan, DeviceGatewayStatus]):
    kind = DEVICE_GATEWAY
    component = builder.COMPONENT
    child_kinds = (SERVICE_ACCOUNT, ROLE_BINDING, NETWORK_POLICY, DEPLOYMENT, SERVICE)
    status_model = DeviceGatewayStatus
    depends_on = (("recordStore", RECORD_STORE),)

    def plan(self, kube: Kube, settings: WorkloadSettings, body: Manifest) -> GatewayPlan:
        meta = body["metadata"]
        namespace = meta["namespace"]
        spec = DeviceGatewaySpec.model_validate(body.get("spec") or {})
        hospital_of(namespace)
        store = kube.get(RECORD_STORE, spec.record_store, namespace)
        ceiling = Ceiling.of(kube.get(LIMIT_RANGE, LIMITS_NAME, namespace))
        # The pods mount the CA certificate + CRL and a serving certificate: both exist before the Deployment.
        trust = ensure_trust(kube, namespace, hospital_of(namespace))
        certificates = [ensure_serving(kube, body, trust.ca, settings)]
        broker_ca = read_broker_ca(settings)
        if broker_ca is not None and builder.broker_tls(spec, settings):
            certificates.append(ensure_broker_client(kube, body, broker_ca, settings))
        # A new gateway's grant (or a new hospital's CA) reaches the platform broker's bundle.
        ensure_gateway_in_broker_trust(kube, settings, body)
        devices = kube.list(DEVICE, namespace, label_selector=f"{labels.DEVICE_GATEWAY}={meta['name']}")
        counts = device_builder.counts(devices)
        for state in ("pending", "enrolled", "revoked"):
            metrics.DEVICES.labels(namespace=namespace, gateway=meta["name"], state=state).set(getattr(counts, state))
        return GatewayPlan(
            desired=builder.build_gateway(
                body, spec, credentials_secret(spec.record_store, store), ceiling, settings, certificates
            ),
            dependencies=judge_dependencies(builder.dependencies(spec, store)),
            endpoints=builder.endpoints(meta["name"], namespace, spec),
            devices=counts,
        )

    def next_status(
        self, previous: DeviceGatewayStatus, findings: Findings, plan: GatewayPlan | None, deployment: Manifest | None
    ) -> DeviceGatewayStatus:
        return builder.next_status(
            previous,
            endpoints=plan.endpoints if plan is not None else None,
            devices=plan.devices if plan is not None else None,
            **findings,
        )


GATEWAYS = GatewayWorkload()


def device_changed(
    type: str | None, namespace: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """A Device's event: its gateway counts it again (and mounts a CRL that is already current)."""
    gateway = (body.get("spec") or {}).get("gateway")
    if type is None or namespace is None or not gateway:
        return  # the initial listing: every gateway is resumed anyway
    _reconcile_gateway(get_context(memo), namespace, str(gateway), logger)


def _reconcile_gateway(ctx: OperatorContext, namespace: str, name: str, logger: Logger) -> None:
    try:
        workload.reconcile(ctx, ctx.settings, GATEWAYS, namespace, name, logger)
    except (kopf.TemporaryError, kopf.PermanentError) as exc:
        # The gateway's own handlers and timer retry it.
        logger.debug("DeviceGateway %s/%s: %s", namespace, name, exc)


def refresh_gateways(ctx: OperatorContext, namespace: str, logger: Logger) -> None:
    """Every gateway of the namespace reconciled now: after a device CA rotation each gets a serving certificate
    of the new CA (its pods roll onto it) instead of waiting for its resync."""
    for gateway in ctx.kube.list(DEVICE_GATEWAY, namespace):
        _reconcile_gateway(ctx, namespace, gateway["metadata"]["name"], logger)


def count_active(kube: Kube, name: str, namespace: str, body: Manifest, cidrs: list[str]) -> int | None:
    """The gateway's ``active`` devices from its ready replicas, written to its status when it changed.

    None (nothing written) when a replica does not answer: see :mod:`medcloud_operator.presence`.
    """
    child = builder.child_name(name)
    slices = kube.list(ENDPOINT_SLICE, namespace, label_selector=f"{SERVICE_NAME_LABEL}={child}")
    reports = presence.ask_replicas(presence.endpoint_addresses(slices), builder.HEALTH_PORT, cidrs)
    if reports is None:
        return None
    devices = kube.list(DEVICE, namespace, label_selector=f"{labels.DEVICE_GATEWAY}={name}")
    enrolled = [
        d["metadata"]["name"]
        for d in devices
        if DeviceStatus.model_validate(d.get("status") or {}).state is DeviceState.ENROLLED
    ]
    active = presence.active_devices(reports, enrolled)
    metrics.DEVICES.labels(namespace=namespace, gateway=name, state="active").set(active)
    if ((body.get("status") or {}).get("devices") or {}).get("active") != active:
        kube.merge_patch(DEVICE_GATEWAY, name, {"status": {"devices": {"active": active}}}, namespace, "status")
    return active


def gateway_presence(
    name: str, namespace: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """The presence timer: not queued behind reconciles (it writes status.devices.active alone, and waits on no
    reconcile), bounded by the replicas' 2 s timeout, asked in parallel."""
    ctx = get_context(memo)
    if namespace is None:
        return
    try:
        count_active(ctx.kube, name, namespace, dict(body), ctx.settings.gateway_presence_cidrs)
    except (ApiException, HTTPError, OSError) as exc:
        # The next tick asks again; the count stays as it was meanwhile.
        logger.debug("DeviceGateway %s/%s: presence not counted: %s", namespace, name, exc)


async def gateway_deleted(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A deleted MQTT gateway's grant withdrawn from the broker's ACL (:mod:`medcloud_operator.brokergrants`)."""
    protocols = (body.get("spec") or {}).get("protocols") or []
    if type == "DELETED" and DeviceProtocol.MQTT.value in protocols:
        get_context(memo).broker_grants.withdraw()


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    workload.register(registry, settings, GATEWAYS)
    kopf.on.event(
        DEVICE_GATEWAY.api_version, DEVICE_GATEWAY.plural, id="devicegateway_broker_grant", registry=registry
    )(gateway_deleted)
    kopf.on.event(DEVICE.api_version, DEVICE.plural, id="devicegateway-devices", registry=registry)(device_changed)
    if not settings.gateway_presence_cidrs:
        return  # no pod range to ask in: active stays unset
    group, version = DEVICE_GATEWAY.api_version.split("/")
    kopf.timer(
        group,
        version,
        DEVICE_GATEWAY.plural,
        id="devicegateway_presence",
        interval=settings.gateway_presence_seconds,
        initial_delay=settings.gateway_presence_seconds,
        registry=registry,
    )(gateway_presence)
