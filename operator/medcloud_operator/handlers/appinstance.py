"""AppInstance handlers: run a catalog app in its hospital's namespace, wired to its RecordStore and DeviceGateway.

Triggers, all funnelled into ``handlers.workload.reconcile``:

- the AppInstance is created, changed or found at startup (Kopf's create/update/resume);
- one of its children (ConfigMap, Deployment, Service, Ingress) changes or
  disappears: drift repair, and the Deployment's rollout progress;
- the RecordStore or DeviceGateway it names, or the tenant's LimitRange,
  appears, changes or goes away (an index of AppInstances by what they
  read; no listing);
- a resync timer, as a safety net.

Children carry an owner reference to the AppInstance: deleting it lets the
garbage collector remove them, so there is no deletion handler (Kopf's
finalizer, there because of the timer, is simply removed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from medcloud.models import GROUP, VERSION, AppInstanceSpec, AppInstanceStatus
from medcloud_operator.builders import appinstance as builder
from medcloud_operator.builders.hospital import LIMITS_NAME
from medcloud_operator.builders.workload import (
    Ceiling,
    credentials_secret,
    hospital_of,
    judge_dependencies,
    ready_replicas,
)
from medcloud_operator.catalog import WorkloadSettings
from medcloud_operator.conditions import now_utc
from medcloud_operator.context import get_context
from medcloud_operator.handlers import workload
from medcloud_operator.handlers.workload import Plan, Workload, workload_settings
from medcloud_operator.kube import (
    APP_INSTANCE,
    CONFIG_MAP,
    DEPLOYMENT,
    DEVICE_GATEWAY,
    INGRESS,
    LIMIT_RANGE,
    RECORD_STORE,
    SERVICE,
    Kube,
    Manifest,
)
from medcloud_operator.status import Check

PLURAL = APP_INSTANCE.plural


@dataclass(frozen=True)
class AppPlan(Plan):
    url: str


class AppWorkload(Workload[AppPlan, AppInstanceStatus]):
    kind = APP_INSTANCE
    component = builder.COMPONENT
    child_kinds = (CONFIG_MAP, DEPLOYMENT, SERVICE, INGRESS)
    pruned_kinds = (INGRESS,)

    def plan(self, kube: Kube, settings: WorkloadSettings, body: Manifest) -> AppPlan:
        namespace = body["metadata"]["namespace"]
        spec = AppInstanceSpec.model_validate(body.get("spec") or {})
        hospital_of(namespace)
        store = kube.get(RECORD_STORE, spec.record_store, namespace) if spec.record_store else None
        gateway = kube.get(DEVICE_GATEWAY, spec.device_gateway, namespace) if spec.device_gateway else None
        ceiling = Ceiling.of(kube.get(LIMIT_RANGE, LIMITS_NAME, namespace))
        secret = credentials_secret(spec.record_store, store) if spec.record_store else None
        return AppPlan(
            desired=builder.build_app(body, spec, secret, ceiling, settings),
            dependencies=judge_dependencies(builder.dependencies(spec, store, gateway)),
            url=builder.url(body, spec),
        )

    def parse_status(self, raw: Mapping[str, Any] | None) -> AppInstanceStatus:
        try:
            return AppInstanceStatus.model_validate(raw or {})
        except ValidationError:
            return AppInstanceStatus()

    def next_status(
        self,
        previous: AppInstanceStatus,
        *,
        generation: int | None,
        plan: AppPlan | None,
        deployment: Manifest | None,
        available: Check | None,
        failure: Check | None,
        spec_failed: bool,
    ) -> AppInstanceStatus:
        return builder.next_status(
            previous,
            generation=generation,
            dependencies=plan.dependencies if plan is not None else None,
            available=available,
            failure=failure,
            spec_failed=spec_failed,
            url=plan.url if plan is not None else None,
            ready_replicas=ready_replicas(deployment) if deployment is not None else None,
            now=now_utc(),
        )


APPS = AppWorkload()


def _reconcile(namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger) -> None:
    assert namespace is not None  # AppInstances are namespaced
    workload.reconcile(get_context(memo), workload_settings(memo), APPS, namespace, name, logger)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def appinstance_changed(namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    _reconcile(namespace, name, memo, logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=workload.RESYNC_SECONDS, initial_delay=workload.RESYNC_SECONDS)
def appinstance_resync(namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    _reconcile(namespace, name, memo, logger)


@kopf.on.event(GROUP, VERSION, PLURAL, id="appinstance-deleted")
def appinstance_deleted(type: str | None, namespace: str | None, name: str, **_: Any) -> None:
    if type == "DELETED":
        workload.forget(APPS, namespace, name)


DEPENDENCY_INDEX = "appinstances_by_dependency"
"""The index's id, and the keyword argument Kopf passes it to every handler by."""


@kopf.index(GROUP, VERSION, PLURAL, id=DEPENDENCY_INDEX)
def appinstances_by_dependency(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[workload.DependencyKey, str]:
    """Which AppInstances read which RecordStore, DeviceGateway and LimitRange: their events reach them, no LIST."""
    if namespace is None:
        return {}
    depends_on = [(RECORD_STORE, str(spec["recordStore"]))] if spec.get("recordStore") else []
    if spec.get("deviceGateway"):
        depends_on.append((DEVICE_GATEWAY, str(spec["deviceGateway"])))
    return workload.dependency_keys(namespace, name, depends_on)


workload.register_dependency_handlers(APPS, DEPENDENCY_INDEX, (RECORD_STORE, DEVICE_GATEWAY))
workload.register_drift_handlers(APPS)
