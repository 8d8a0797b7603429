"""DeviceGateway handlers: run the gateway in its hospital's namespace, writing into its RecordStore.

The triggers are those of every workload (``handlers.workload.register``):

- the DeviceGateway is created, changed or found at startup (Kopf's create/update/resume);
- its ServiceAccount, RoleBinding, Deployment or Service changes or disappears: drift repair, and rollout progress;
- its RecordStore or the tenant's LimitRange appears, changes or goes away
  (an index of gateways by what they read; no listing);
- a resync timer, as a safety net.

Children carry an owner reference to the gateway: deleting it lets the
garbage collector remove them, so there is no deletion handler (Kopf's
finalizer, there because of the timer, is simply removed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kopf

from medcloud.kube.client import (
    DEPLOYMENT,
    DEVICE,
    DEVICE_GATEWAY,
    LIMIT_RANGE,
    NETWORK_POLICY,
    RECORD_STORE,
    ROLE_BINDING,
    SERVICE,
    SERVICE_ACCOUNT,
    Manifest,
)
from medcloud.models import DeviceCounts, DeviceGatewaySpec, DeviceGatewayStatus
from medcloud.tenancy import labels
from medcloud_operator import metrics
from medcloud_operator.builders import device as device_builder
from medcloud_operator.builders import devicegateway as builder
from medcloud_operator.builders.hospital import LIMITS_NAME
from medcloud_operator.builders.workload import Ceiling, Findings, credentials_secret, hospital_of, judge_dependencies
from medcloud_operator.context import get_context
from medcloud_operator.deviceca import ensure_broker_client, ensure_serving, ensure_trust, read_broker_ca
from medcloud_operator.handlers import workload
from medcloud_operator.handlers.workload import Plan, Workload
from medcloud_operator.kube import Kube
from medcloud_operator.settings import OperatorSettings, WorkloadSettings


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
    ctx = get_context(memo)
    try:
        workload.reconcile(ctx, ctx.settings, GATEWAYS, namespace, str(gateway), logger)
    except (kopf.TemporaryError, kopf.PermanentError) as exc:
        # The gateway's own handlers and timer retry it.
        logger.debug("DeviceGateway %s/%s: %s", namespace, gateway, exc)


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    workload.register(registry, settings, GATEWAYS)
    kopf.on.event(DEVICE.api_version, DEVICE.plural, id="devicegateway-devices", registry=registry)(device_changed)
