"""What AppInstances and DeviceGateways have in common: names, labels, a restricted pod, compute, readiness.

Every function here is pure. The two kinds run a Deployment (and a Service)
in a hospital's namespace, which enforces Pod Security ``restricted`` and a
LimitRange; these helpers make their pods pass both, and turn the live
Deployment and the referenced RecordStore or DeviceGateway into conditions.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

from pydantic import ValidationError

from medcloud.kube.client import Manifest
from medcloud.models import Condition, ConditionStatus, Phase, Reason, StatusBase, WorkloadCondition, WorkloadReason
from medcloud.models.common import HOSPITAL_NAMESPACE_PREFIX, ComputeResources, parse_quantity
from medcloud.models.conditions import find_condition, set_condition
from medcloud.tenancy import labels
from medcloud.tenancy.store import credentials_secret_name, hospital_of_namespace
from medcloud_operator import OPERATOR_NAME
from medcloud_operator.builders.hospital import LIMITS_NAME
from medcloud_operator.status import Check

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
VERSION_LABEL = "app.kubernetes.io/version"
CONFIG_HASH_ANNOTATION = "medcloud.io/config-hash"
"""On the pod template: a hash of what the pods read at start, so a change rolls them."""

LABEL_MAX = 63
HASH_HEX = 10
RUN_AS = 10001
"""The unprivileged user and group every container runs as (restricted forbids root)."""
TMP_VOLUME = "tmp"
"""Writable scratch space: the root filesystem is read-only."""

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class InvalidWorkloadError(ValueError):
    """The resource passed schema validation but cannot be realised where or as it is written."""


# --------------------------------------------------------------------------- names and labels


def hospital_of(namespace: str) -> str:
    """The Hospital whose tenant namespace this is (``hospital-<name>``)."""
    hospital = hospital_of_namespace(namespace)
    if hospital is None:
        raise InvalidWorkloadError(
            f"namespace {namespace} is not a hospital's tenant namespace ({HOSPITAL_NAMESPACE_PREFIX}<hospital>): "
            "apps and device gateways run only inside a hospital"
        )
    return hospital


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:HASH_HEX]


def child_name(prefix: str, name: str) -> str:
    """``<prefix><name>`` as a DNS-1035 label, what a Service's name must be.

    The owner's name is a DNS subdomain: it may hold dots and be 253
    characters long. When ``<prefix><name>`` is not a valid label as it is,
    the readable part is cleaned and shortened and a hash of the full name is
    appended, so two owners never share a child.
    """
    candidate = f"{prefix}{name}"
    if len(candidate) <= LABEL_MAX and _DNS1035.match(candidate):
        return candidate
    readable = re.sub(r"[^a-z0-9-]", "-", candidate)[: LABEL_MAX - HASH_HEX - 1].rstrip("-")
    return f"{readable}-{_digest(name)}"


def label_value(value: str) -> str:
    """``value`` as a label value (63 characters of ``[-_.A-Za-z0-9]``); shortened with a hash when it is not one."""
    if len(value) <= LABEL_MAX and _LABEL_VALUE.match(value):
        return value
    readable = re.sub(r"[^-_.A-Za-z0-9]", "_", value)[: LABEL_MAX - HASH_HEX - 1].rstrip("-_.")
    return f"{readable}-{_digest(value)}"


def selector_labels(component: str, owner: str) -> dict[str, str]:
    """What a Deployment selects its pods and a Service its endpoints by; fixed for the owner's life."""
    return {labels.COMPONENT: component, INSTANCE_LABEL: label_value(owner)}


def child_labels(hospital: str, component: str, owner: str, name: str, version: str) -> dict[str, str]:
    """Labels of every child (and pod): traced to the operator and the hospital like the tenancy's children."""
    return {
        labels.MANAGED_BY: OPERATOR_NAME,
        labels.PART_OF: "medcloud",
        labels.HOSPITAL: hospital,
        NAME_LABEL: name,
        # Build metadata's "+" is no label character; "_" as in image tags (and Helm's chart labels).
        VERSION_LABEL: label_value(version.replace("+", "_")),
        **selector_labels(component, owner),
    }


def child_selector(component: str, owner: str) -> str:
    """Server-side label selector of one owner's children (what pruning may touch)."""
    return ",".join(
        f"{k}={v}" for k, v in {labels.MANAGED_BY: OPERATOR_NAME, **selector_labels(component, owner)}.items()
    )


def owner_reference(owner: Manifest) -> Manifest:
    """A controller reference to the AppInstance or DeviceGateway, so the garbage collector removes its children.

    (A Hospital's tenancy is traced by labels only, so that a forced deletion
    cannot cascade into records; a Deployment holds no records, and its
    RecordStore is never owned.) ``blockOwnerDeletion`` is false: deleting the
    owner never waits for its children, and the operator needs no permission
    on owners' finalizers.
    """
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": False,
    }


def credentials_secret(store: str, live_store: Manifest | None) -> str:
    """The RecordStore's credentials Secret: as its status names it, else by the RecordStore handler's naming rule.

    The rule lets a workload be wired before its store is provisioned; both
    give the same name, so the wiring never changes when the status appears.
    """
    ref = (((live_store or {}).get("status") or {}).get("secretRef") or {}).get("name")
    return str(ref) if ref else credentials_secret_name(store)


def service_host(service: str, namespace: str) -> str:
    """The Service's DNS name inside the cluster (the search path completes ``.svc``)."""
    return f"{service}.{namespace}.svc"


# --------------------------------------------------------------------------- a pod that passes restricted


def pod_security_context() -> Manifest:
    """Pod level of Pod Security ``restricted``: non-root, RuntimeDefault seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Manifest:
    """Container level of ``restricted`` and more: no escalation, no capabilities, a read-only root.

    ``privileged: false`` is spelled out (the default) so that someone
    switching it on by hand is seen as drift and put back.
    """
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_spec_base(containers: list[Manifest], volumes: list[Manifest]) -> Manifest:
    """A pod spec with no host access, no API token and no service-link env, plus scratch space at /tmp.

    Workloads do not call the Kubernetes API, so no token is mounted; host
    namespaces are spelled out false so that switching one on is drift.
    """
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "securityContext": pod_security_context(),
        "containers": containers,
        "volumes": [*volumes, {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}],
    }


def tmp_mount() -> Manifest:
    return {"name": TMP_VOLUME, "mountPath": "/tmp"}  # noqa: S108 - an emptyDir of the pod's own


STARTUP_PROBE: Manifest = {"periodSeconds": 5, "failureThreshold": 60}
"""Up to 5 minutes to answer once: a gateway started on a loaded 2-core node took over the old 70 s
(initial delay plus three failed liveness checks) and was restarted before it had ever answered."""


def http_probes(port: str, path: str, ready_path: str | None = None) -> Manifest:
    """Readiness and liveness on the container's health endpoint (readiness on ``ready_path`` when it has one)."""
    probe = {"httpGet": {"path": path, "port": port, "scheme": "HTTP"}}
    ready = {"httpGet": {"path": ready_path or path, "port": port, "scheme": "HTTP"}}
    return {
        # Liveness waits for the start: a process still importing on a busy node is slow, not stuck.
        "startupProbe": STARTUP_PROBE | probe,
        "readinessProbe": {**ready, "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 20, "failureThreshold": 3},
    }


# --------------------------------------------------------------------------- compute within the LimitRange


@dataclass(frozen=True)
class Ceiling:
    """The most one container may have in the tenant namespace (the LimitRange's ``max``); None: no limit."""

    cpu: str | None = None
    memory: str | None = None

    @classmethod
    def of(cls, limit_range: Manifest | None) -> Ceiling:
        """The ceiling of a live LimitRange; none when the tenant has none (yet)."""
        for item in ((limit_range or {}).get("spec") or {}).get("limits") or []:
            if item.get("type") == "Container":
                top = item.get("max") or {}
                return cls(cpu=_str(top.get("cpu")), memory=_str(top.get("memory")))
        return cls()


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _smaller(value: str, ceiling: str | None) -> str:
    return ceiling if ceiling is not None and parse_quantity(ceiling) < parse_quantity(value) else value


def cap_cpu_request(resources: Manifest, max_cpu_request: str | None) -> Manifest:
    """``resources`` with the CPU request lowered to ``max_cpu_request`` (the operator's setting); limits kept."""
    requests = resources.get("requests") or {}
    if max_cpu_request is None or "cpu" not in requests:
        return resources
    return {**resources, "requests": {**requests, "cpu": _smaller(requests["cpu"], max_cpu_request)}}


def fit_resources(requests: ComputeResources, limits: ComputeResources, ceiling: Ceiling) -> Manifest:
    """Catalog defaults lowered to fit the ceiling: limits at most the max, requests at most the limits."""
    out_limits: dict[str, str] = {}
    out_requests: dict[str, str] = {}
    for resource in ("cpu", "memory"):
        limit, request = getattr(limits, resource), getattr(requests, resource)
        if limit is not None:
            out_limits[resource] = _smaller(limit, getattr(ceiling, resource))
        if request is not None:
            out_requests[resource] = _smaller(request, out_limits.get(resource, getattr(ceiling, resource)))
    return {"requests": out_requests, "limits": out_limits}


def checked_resources(requests: ComputeResources, limits: ComputeResources, ceiling: Ceiling, field: str) -> Manifest:
    """Resources a person chose, as they are; refused (not silently lowered) when above the ceiling.

    The LimitRange would refuse every pod anyway, with the reason buried in
    the ReplicaSet's events; this says it on the resource itself.
    """
    out: Manifest = {"requests": {}, "limits": {}}
    for part, values in (("requests", requests), ("limits", limits)):
        for resource in ("cpu", "memory"):
            value, top = getattr(values, resource), getattr(ceiling, resource)
            if value is None:
                continue
            if top is not None and parse_quantity(value) > parse_quantity(top):
                raise InvalidWorkloadError(
                    f"{field}.{part}.{resource} {value} is above the {resource} a container may have in this "
                    f"hospital ({top}, LimitRange {LIMITS_NAME}); lower it, or raise the Hospital's quota"
                )
            out[part][resource] = value
    return out


# --------------------------------------------------------------------------- readiness


def judge_rollout(deployment: Manifest, *, written: bool) -> Check | None:
    """Whether the Deployment has rolled out, the way ``kubectl rollout status`` decides it.

    ``written``: this reconcile has just created or updated the Deployment.
    None means nothing new can be said: someone else changed the Deployment
    (an annotation bumps its generation too) and its controller has not
    looked yet; the status it writes next brings another reconcile.
    """
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation") or 0
    replicas = int(spec.get("replicas", 1))
    if int(status.get("observedGeneration") or 0) < generation:
        if not written:
            return None
        return Check(
            ConditionStatus.FALSE, WorkloadReason.ROLLING_OUT, "Waiting for the Deployment controller to roll out."
        )
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    failure = conditions.get("ReplicaFailure")
    if failure is not None and failure.get("status") == "True":
        return Check(
            ConditionStatus.FALSE,
            WorkloadReason.REPLICA_FAILURE,
            f"Pods cannot be created: {failure.get('message') or failure.get('reason')}",
        )
    progressing = conditions.get("Progressing") or {}
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Check(
            ConditionStatus.FALSE,
            WorkloadReason.PROGRESS_DEADLINE_EXCEEDED,
            f"The rollout stopped making progress: {progressing.get('message') or 'no detail'}",
        )
    updated = int(status.get("updatedReplicas") or 0)
    current = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < replicas:
        return Check(ConditionStatus.FALSE, WorkloadReason.ROLLING_OUT, f"{updated} of {replicas} pods updated.")
    if current > updated:
        return Check(
            ConditionStatus.FALSE, WorkloadReason.ROLLING_OUT, f"{current - updated} old pods are being replaced."
        )
    if available < updated:
        return Check(ConditionStatus.FALSE, WorkloadReason.ROLLING_OUT, f"{available} of {replicas} pods available.")
    if replicas == 0:
        return Check(ConditionStatus.TRUE, WorkloadReason.ROLLOUT_COMPLETE, "Scaled to 0 pods: stopped.")
    return Check(ConditionStatus.TRUE, WorkloadReason.ROLLOUT_COMPLETE, f"{available} of {replicas} pods available.")


def ready_replicas(deployment: Manifest) -> int:
    return int(((deployment.get("status") or {}).get("readyReplicas")) or 0)


@dataclass(frozen=True)
class Dependency:
    """A RecordStore or DeviceGateway a workload is wired to, as found in its namespace (None: absent)."""

    kind: str
    name: str
    field: str
    """The spec field that names it, for messages."""
    live: Manifest | None


def judge_dependencies(dependencies: Sequence[Dependency]) -> Check:
    """True when every dependency exists and is Ready; else the first failure's reason and every failure's message."""
    if not dependencies:
        return Check(ConditionStatus.TRUE, WorkloadReason.NO_DEPENDENCIES, "Wired to no RecordStore or DeviceGateway.")
    reasons: list[str] = []
    messages: list[str] = []
    for dep in dependencies:
        if dep.live is None:
            reasons.append(f"{dep.kind}NotFound")
            messages.append(f"{dep.kind} {dep.name} ({dep.field}) does not exist in this namespace; create it.")
            continue
        status = status_of(dep.live)
        if not status.is_ready():
            ready = status.condition(WorkloadCondition.READY)
            why = f": {ready.message}" if ready is not None and ready.message else ""
            reasons.append(f"{dep.kind}NotReady")
            messages.append(f"{dep.kind} {dep.name} is not Ready (phase {status.phase or 'unknown'}){why}")
    if not reasons:
        names = " and ".join(f"{d.kind} {d.name}" for d in dependencies)
        return Check(ConditionStatus.TRUE, WorkloadReason.DEPENDENCIES_READY, f"{names} Ready.")
    return Check(ConditionStatus.FALSE, reasons[0], " ".join(messages))


def status_of(obj: Manifest) -> StatusBase:
    """The common part of another kind's status; one the model cannot read counts as empty (not Ready)."""
    raw = obj.get("status") or {}
    try:
        return StatusBase.model_validate({k: v for k, v in raw.items() if k in ("phase", "conditions")})
    except ValidationError:
        return StatusBase()


DEGRADING = frozenset({WorkloadReason.REPLICA_FAILURE, WorkloadReason.PROGRESS_DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class Outcome:
    """Conditions and phase after a reconcile (the kind's own status fields are added by its builder)."""

    conditions: list[Condition]
    phase: Phase
    ready: Check


class Findings(TypedDict):
    """What one reconcile found: the arguments ``next_outcome`` and each kind's ``next_status`` share."""

    generation: int | None
    dependencies: Check | None
    available: Check | None
    failure: Check | None
    spec_failed: bool
    now: datetime


def next_outcome(
    previous: StatusBase,
    *,
    generation: int | None,
    dependencies: Check | None,
    available: Check | None,
    failure: Check | None,
    spec_failed: bool,
    ready_message: str,
    now: datetime,
) -> Outcome:
    """The conditions and phase for what a reconcile found.

    Parts given as None were not reached and keep their previous condition.
    A ``failure`` (the reconcile itself failed) is shown as Available=False,
    since what cannot be written cannot be available, and takes precedence in
    Ready. Phase: Failed when the spec cannot be realised; Ready; Degraded once
    it had been Ready, or when pods are refused or stuck; Pending while a
    dependency is missing or not Ready; otherwise Provisioning (rolling out).
    """
    conditions = list(previous.conditions)
    parts = ((WorkloadCondition.DEPENDENCIES_READY, dependencies), (WorkloadCondition.AVAILABLE, failure or available))
    for type_, check in parts:
        if check is not None:
            conditions = set_condition(conditions, type_, check.status, check.reason, check.message, generation, now)
    ready = failure or _first_failing(conditions)
    if ready is None:
        ready = Check(ConditionStatus.TRUE, Reason.RECONCILED, ready_message)
    conditions = set_condition(
        conditions, WorkloadCondition.READY, ready.status, ready.reason, ready.message, generation, now
    )
    deps = find_condition(conditions, WorkloadCondition.DEPENDENCIES_READY)
    if spec_failed:
        phase = Phase.FAILED
    elif ready.ok:
        phase = Phase.READY
    elif previous.phase in (Phase.READY, Phase.DEGRADED) or ready.reason in DEGRADING:
        phase = Phase.DEGRADED
    elif deps is not None and deps.status is not ConditionStatus.TRUE:
        phase = Phase.PENDING
    else:
        phase = Phase.PROVISIONING
    return Outcome(conditions=conditions, phase=phase, ready=ready)


def _first_failing(conditions: Sequence[Condition]) -> Check | None:
    for type_ in (WorkloadCondition.DEPENDENCIES_READY, WorkloadCondition.AVAILABLE):
        condition = find_condition(conditions, type_)
        if condition is None:
            return Check(ConditionStatus.FALSE, Reason.PROVISIONING, "Provisioning.")
        if condition.status is not ConditionStatus.TRUE:
            return Check(condition.status, condition.reason, condition.message)
    return None


def config_hash(values: Mapping[str, str]) -> str:
    """A short, stable hash of what pods read at start."""
    text = "\n".join(f"{k}={v}" for k, v in sorted(values.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
