"""AppInstance handlers: run a catalog app in its hospital's namespace, wired to its RecordStore and DeviceGateway.

The triggers are those of every workload (``handlers.workload.register``):

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

from dataclasses import dataclass

import kopf

from medcloud.kube.client import (
    APP_INSTANCE,
    CONFIG_MAP,
    CONSORTIUM,
    DEPLOYMENT,
    DEVICE_GATEWAY,
    HOSPITAL,
    INGRESS,
    LIMIT_RANGE,
    NETWORK_POLICY,
    RECORD_STORE,
    ROLE,
    ROLE_BINDING,
    SERVICE,
    SERVICE_ACCOUNT,
    Manifest,
)
from medcloud.models import AppInstanceSpec, AppInstanceStatus
from medcloud_operator.builders import appinstance as builder
from medcloud_operator.builders.hospital import LIMITS_NAME
from medcloud_operator.builders.workload import (
    Ceiling,
    Findings,
    credentials_secret,
    hospital_of,
    judge_dependencies,
    ready_replicas,
)
from medcloud_operator.catalog import CATALOG, require_published
from medcloud_operator.handlers import workload
from medcloud_operator.handlers.workload import Plan, Workload
from medcloud_operator.kube import Kube
from medcloud_operator.settings import OperatorSettings, WorkloadSettings


@dataclass(frozen=True)
class AppPlan(Plan):
    url: str


class AppWorkload(Workload[AppPlan, AppInstanceStatus]):
    kind = APP_INSTANCE
    component = builder.COMPONENT
    child_kinds = (SERVICE_ACCOUNT, ROLE, ROLE_BINDING, NETWORK_POLICY, CONFIG_MAP, DEPLOYMENT, SERVICE, INGRESS)
    pruned_kinds = (INGRESS, NETWORK_POLICY, ROLE_BINDING, ROLE, SERVICE_ACCOUNT)
    status_model = AppInstanceStatus
    depends_on = (("recordStore", RECORD_STORE), ("deviceGateway", DEVICE_GATEWAY))

    def plan(self, kube: Kube, settings: WorkloadSettings, body: Manifest) -> AppPlan:
        namespace = body["metadata"]["namespace"]
        spec = AppInstanceSpec.model_validate(body.get("spec") or {})
        hospital_of(namespace)
        # Before reading anything: an app with no image gets no Deployment whose pods could never start.
        require_published(spec.app, settings)
        store = kube.get(RECORD_STORE, spec.record_store, namespace) if spec.record_store else None
        gateway = kube.get(DEVICE_GATEWAY, spec.device_gateway, namespace) if spec.device_gateway else None
        ceiling = Ceiling.of(kube.get(LIMIT_RANGE, LIMITS_NAME, namespace))
        secret = credentials_secret(spec.record_store, store) if spec.record_store else None
        exchange_url = _exchange_url(kube, namespace) if CATALOG[spec.app].exchange_client else None
        return AppPlan(
            desired=builder.build_app(body, spec, secret, ceiling, settings, exchange_url),
            dependencies=judge_dependencies(builder.dependencies(spec, store, gateway)),
            url=builder.url(body, spec),
        )

    def next_status(
        self, previous: AppInstanceStatus, findings: Findings, plan: AppPlan | None, deployment: Manifest | None
    ) -> AppInstanceStatus:
        return builder.next_status(
            previous,
            url=plan.url if plan is not None else None,
            ready_replicas=ready_replicas(deployment) if deployment is not None else None,
            **findings,
        )


def _exchange_url(kube: Kube, namespace: str) -> str | None:
    """The exchange of the hospital's consortium, as its Consortium's status names it (None: none yet)."""
    hospital = kube.get(HOSPITAL, hospital_of(namespace))
    consortium = ((hospital or {}).get("spec") or {}).get("consortium")
    if not consortium:
        return None
    live = kube.get(CONSORTIUM, str(consortium))
    endpoint = (((live or {}).get("status") or {}).get("exchange") or {}).get("endpoint")
    return str(endpoint).removesuffix("/fhir") if endpoint else None


APPS = AppWorkload()


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    workload.register(registry, settings, APPS)
