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
from medcloud.models.workload import WorkloadReason
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
from medcloud_operator.handlers.common import ReconcileError
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
        exchange_url = None
        if CATALOG[spec.app].exchange_client:
            consortium, exchange_url = _exchange_of(kube, namespace)
            if consortium is not None and exchange_url is None:
                raise exchange_not_ready(spec.app, consortium)
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


EXCHANGE_RECHECK_SECONDS = 10.0
"""How soon an app waiting for its exchange is looked at again (Kopf's retry of its own handler)."""


def exchange_not_ready(app: str, consortium: str) -> ReconcileError:
    """Nothing is made yet: the app's pods would start without ``MEDCLOUD_EXCHANGE_URL`` and crash-loop."""
    return ReconcileError(
        WorkloadReason.EXCHANGE_NOT_READY,
        f"{app} calls its consortium's exchange, and Consortium {consortium} names none yet "
        "(status.exchange.endpoint): the app starts once it does.",
        delay=EXCHANGE_RECHECK_SECONDS,
    )


def exchange_of(hospital: Manifest | None, consortium: Manifest | None) -> tuple[str | None, str | None]:
    """The hospital's consortium (None: it names none) and that consortium's exchange URL (None: none yet)."""
    name = ((hospital or {}).get("spec") or {}).get("consortium")
    if not name:
        return None, None
    endpoint = (((consortium or {}).get("status") or {}).get("exchange") or {}).get("endpoint")
    return str(name), str(endpoint).removesuffix("/fhir") if endpoint else None


def _exchange_of(kube: Kube, namespace: str) -> tuple[str | None, str | None]:
    hospital = kube.get(HOSPITAL, hospital_of(namespace))
    name = ((hospital or {}).get("spec") or {}).get("consortium")
    return exchange_of(hospital, kube.get(CONSORTIUM, str(name)) if name else None)


APPS = AppWorkload()


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    workload.register(registry, settings, APPS)
