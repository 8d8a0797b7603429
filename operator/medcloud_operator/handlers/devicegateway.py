"""DeviceGateway handlers: run the gateway in its hospital's namespace, writing into its RecordStore.

Triggers, all funnelled into ``handlers.workload.reconcile``:

- the DeviceGateway is created, changed or found at startup (Kopf's create/update/resume);
- its Deployment or Service changes or disappears: drift repair, and rollout progress;
- its RecordStore or the tenant's LimitRange appears, changes or goes away
  (an index of gateways by what they read; no listing);
- a resync timer, as a safety net.

Children carry an owner reference to the gateway: deleting it lets the
garbage collector remove them, so there is no deletion handler (Kopf's
finalizer, there because of the timer, is simply removed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from medcloud.models import GROUP, VERSION, DeviceGatewaySpec, DeviceGatewayStatus
from medcloud_operator.builders import devicegateway as builder
from medcloud_operator.builders.hospital import LIMITS_NAME
from medcloud_operator.builders.workload import Ceiling, credentials_secret, hospital_of, judge_dependencies
from medcloud_operator.catalog import WorkloadSettings
from medcloud_operator.conditions import now_utc
from medcloud_operator.context import get_context
from medcloud_operator.handlers import workload
from medcloud_operator.handlers.workload import Plan, Workload, workload_settings
from medcloud_operator.kube import DEPLOYMENT, DEVICE_GATEWAY, LIMIT_RANGE, RECORD_STORE, SERVICE, Kube, Manifest
from medcloud_operator.status import Check

PLURAL = DEVICE_GATEWAY.plural


@dataclass(frozen=True)
class GatewayPlan(Plan):
    endpoints: dict[str, str]


class GatewayWorkload(Workload[GatewayPlan, DeviceGatewayStatus]):
    kind = DEVICE_GATEWAY
    component = builder.COMPONENT
    child_kinds = (DEPLOYMENT, SERVICE)

    def plan(self, kube: Kube, settings: WorkloadSettings, body: Manifest) -> GatewayPlan:
        meta = body["metadata"]
        namespace = meta["namespace"]
        spec = DeviceGatewaySpec.model_validate(body.get("spec") or {})
        hospital_of(namespace)
        store = kube.get(RECORD_STORE, spec.record_store, namespace)
        ceiling = Ceiling.of(kube.get(LIMIT_RANGE, LIMITS_NAME, namespace))
        return GatewayPlan(
            desired=builder.build_gateway(body, spec, credentials_secret(spec.record_store, store), ceiling, settings),
            dependencies=judge_dependencies(builder.dependencies(spec, store)),
            endpoints=builder.endpoints(meta["name"], namespace, spec),
        )

    def parse_status(self, raw: Mapping[str, Any] | None) -> DeviceGatewayStatus:
        try:
            return DeviceGatewayStatus.model_validate(raw or {})
        except ValidationError:
            return DeviceGatewayStatus()

    def next_status(
        self,
        previous: DeviceGatewayStatus,
        *,
        generation: int | None,
        plan: GatewayPlan | None,
        deployment: Manifest | None,
        available: Check | None,
        failure: Check | None,
        spec_failed: bool,
    ) -> DeviceGatewayStatus:
        return builder.next_status(
            previous,
            generation=generation,
            dependencies=plan.dependencies if plan is not None else None,
            available=available,
            failure=failure,
            spec_failed=spec_failed,
            endpoints=plan.endpoints if plan is not None else None,
            now=now_utc(),
        )


GATEWAYS = GatewayWorkload()


def _reconcile(namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger) -> None:
    assert namespace is not None  # DeviceGateways are namespaced
    workload.reconcile(get_context(memo), workload_settings(memo), GATEWAYS, namespace, name, logger)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def devicegateway_changed(namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    _reconcile(namespace, name, memo, logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=workload.RESYNC_SECONDS, initial_delay=workload.RESYNC_SECONDS)
def devicegateway_resync(namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    _reconcile(namespace, name, memo, logger)


@kopf.on.event(GROUP, VERSION, PLURAL, id="devicegateway-deleted")
def devicegateway_deleted(type: str | None, namespace: str | None, name: str, **_: Any) -> None:
    if type == "DELETED":
        workload.forget(GATEWAYS, namespace, name)


DEPENDENCY_INDEX = "devicegateways_by_dependency"
"""The index's id, and the keyword argument Kopf passes it to every handler by."""


@kopf.index(GROUP, VERSION, PLURAL, id=DEPENDENCY_INDEX)
def devicegateways_by_dependency(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[workload.DependencyKey, str]:
    """Which gateways read which RecordStore and LimitRange: their events reach them without a LIST."""
    if namespace is None:
        return {}
    depends_on = [(RECORD_STORE, str(spec["recordStore"]))] if spec.get("recordStore") else []
    return workload.dependency_keys(namespace, name, depends_on)


workload.register_dependency_handlers(GATEWAYS, DEPENDENCY_INDEX, (RECORD_STORE,))
workload.register_drift_handlers(GATEWAYS)
