"""What a Hospital's tenancy consists of, as plain manifests.

Every function here is pure: a hospital name, its spec and the operator
settings in, dictionaries in the API server's camelCase shape out. Manifests
spell out every field the API server would otherwise default (protocols,
policy types, RBAC subject API groups), so that comparing them with what the
server returns needs no knowledge of server-side defaulting.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from medcloud.kube.client import Manifest
from medcloud.models import (
    API_VERSION,
    ConditionStatus,
    DeviceCAStatus,
    HospitalCondition,
    HospitalReason,
    HospitalSpec,
    HospitalStatus,
    KeyEncryptionKey,
    Phase,
    hospital_namespace,
)
from medcloud.models.conditions import Reason, set_condition
from medcloud.tenancy import labels, onboarding
from medcloud_operator.quantities import quantity
from medcloud_operator.settings import EgressPeer, OperatorSettings
from medcloud_operator.status import Check, summarise

QUOTA_NAME = "medcloud-quota"
LIMITS_NAME = "medcloud-limits"
ADMIN_ROLE_NAME = "medcloud-hospital-admin"
OPERATOR_BINDING_NAME = "medcloud-operator-tenant"
"""RoleBinding giving the operator itself, in this namespace only, the tenant Secrets ClusterRole."""
HOSPITAL_READ_VERBS = ["get", "watch"]
"""What ``spec.admins`` may do with their own (cluster-scoped) Hospital object, by name."""

# Network policy names; each policy is one reason traffic is allowed.
NP_DEFAULT_DENY = "medcloud-default-deny"
NP_SAME_NAMESPACE = "medcloud-allow-same-namespace"
NP_DNS = "medcloud-allow-dns-egress"
NP_STORAGE = "medcloud-allow-record-storage-egress"
NP_PLATFORM = "medcloud-allow-platform-egress"
NP_INGRESS_CONTROLLER = "medcloud-allow-ingress-controller"
NP_CONSORTIUM = "medcloud-allow-consortium-ingress"
DEVICE_GATEWAY_COMPONENT = "devicegateway"
"""``app.kubernetes.io/component`` of a DeviceGateway's pods (``builders.devicegateway.COMPONENT``)."""
NP_CONSORTIUM_EGRESS = "medcloud-allow-consortium-egress"
NP_LISTED_NAMESPACES = "medcloud-allow-listed-namespaces"

# Per-container defaults for pods that state no resources; Pod Security
# `restricted` does not require them, the quota does (it counts requests).
DEFAULT_CPU_REQUEST = "100m"
DEFAULT_CPU_LIMIT = "500m"
DEFAULT_MEMORY_REQUEST = "128Mi"
DEFAULT_MEMORY_LIMIT = "512Mi"

READ = ["get", "list", "watch"]
WRITE = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
LABEL_VALUE_MAX = 63


class InvalidSpecError(ValueError):
    """The spec passed schema validation but cannot be realised (a person must edit it)."""


def _meta(name: str, hospital: str, namespace: str | None = None) -> Manifest:
    meta: Manifest = {"name": name, "labels": labels.tenancy_labels(hospital)}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def _label_value(value: str, field: str) -> str:
    if len(value) > LABEL_VALUE_MAX:
        raise InvalidSpecError(
            f"{field} {value!r} is longer than {LABEL_VALUE_MAX} characters and cannot be a label value; "
            "use a shorter name"
        )
    return value


def _not_above(default: str, ceiling: str) -> str:
    """``default`` unless the quota is smaller, so the LimitRange never contradicts the quota."""
    return ceiling if quantity(ceiling) < quantity(default) else default


def build_namespace(name: str, spec: HospitalSpec, settings: OperatorSettings) -> Manifest:
    """The tenant namespace, labelled for tracing, network selection and Pod Security ``restricted``."""
    meta = _meta(hospital_namespace(name), name)
    ns_labels: dict[str, str] = meta["labels"]
    ns_labels[labels.TIER] = spec.tier.value
    if spec.consortium:
        ns_labels[labels.CONSORTIUM] = _label_value(spec.consortium, "spec.consortium")
    for mode in ("enforce", "audit", "warn"):
        ns_labels[f"pod-security.kubernetes.io/{mode}"] = "restricted"
        ns_labels[f"pod-security.kubernetes.io/{mode}-version"] = settings.pod_security_version
    meta["annotations"] = {
        "medcloud.io/display-name": spec.display_name,
        "medcloud.io/institution-code": spec.institution_code,
    }
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def build_resource_quota(name: str, spec: HospitalSpec) -> Manifest:
    """The namespace's quota, from ``spec.quota`` (whose fields all have defaults)."""
    quota = spec.quota
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _meta(QUOTA_NAME, name, hospital_namespace(name)),
        "spec": {
            "hard": {
                "requests.cpu": quota.cpu,
                "requests.memory": quota.memory,
                "requests.storage": quota.storage,
                "pods": str(quota.pods),
                "persistentvolumeclaims": str(quota.persistent_volume_claims),
            }
        },
    }


def reported_usage(quota: Manifest | None, *, created_in_new_namespace: bool) -> dict[str, str]:
    """The ``status.quotaUsage`` a reconcile reports: the quota's own ``status.used``, once counted.

    A quota just created in a namespace just created has not been counted yet, and nothing can be in
    that namespace to count: every resource it limits is at zero, which is what the quota controller
    then writes (and so the refresh it causes finds nothing to copy).
    """
    used = ((quota or {}).get("status") or {}).get("used")
    if used:
        return dict(used)
    if quota is not None and created_in_new_namespace:
        return {resource: "0" for resource in (quota.get("spec") or {}).get("hard") or {}}
    return {}


def build_limit_range(name: str, spec: HospitalSpec, max_cpu_request: str | None = None) -> Manifest:
    """Defaults for containers that state no resources, and no container above the whole quota.

    ``max_cpu_request`` (the operator's setting) lowers the default CPU request further.
    """
    quota = spec.quota
    cpu_limit = _not_above(DEFAULT_CPU_LIMIT, quota.cpu)
    cpu_request = _not_above(DEFAULT_CPU_REQUEST, cpu_limit)
    if max_cpu_request is not None:
        cpu_request = _not_above(cpu_request, max_cpu_request)
    memory_limit = _not_above(DEFAULT_MEMORY_LIMIT, quota.memory)
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": _meta(LIMITS_NAME, name, hospital_namespace(name)),
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "default": {"cpu": cpu_limit, "memory": memory_limit},
                    "defaultRequest": {
                        "cpu": cpu_request,
                        "memory": _not_above(DEFAULT_MEMORY_REQUEST, memory_limit),
                    },
                    "max": {"cpu": quota.cpu, "memory": quota.memory},
                }
            ]
        },
    }


def _policy(name: str, hospital: str, policy_types: list[str], **rules: Any) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, hospital, hospital_namespace(hospital)),
        "spec": {"podSelector": {}, "policyTypes": policy_types, **rules},
    }


def _namespace_peer(namespace: str) -> Manifest:
    return {"namespaceSelector": {"matchLabels": {labels.NAMESPACE_NAME: namespace}}}


def _platform_rule(peer: EgressPeer) -> Manifest:
    peers: list[Manifest] = [{"ipBlock": {"cidr": cidr}} for cidr in peer.cidrs]
    if peer.namespace is not None:
        selected = _namespace_peer(peer.namespace)
        if peer.pod_labels:
            selected["podSelector"] = {"matchLabels": dict(peer.pod_labels)}
        peers.append(selected)
    return {"to": peers, "ports": [{"protocol": "TCP", "port": peer.port}]}


def _dns_ports(port: int) -> list[Manifest]:
    return [{"protocol": "UDP", "port": port}, {"protocol": "TCP", "port": port}]


def build_network_policies(name: str, spec: HospitalSpec, settings: OperatorSettings) -> list[Manifest]:
    """Default deny in both directions, then one policy per allowed kind of traffic.

    A policy that would have no peers is left out rather than written with an
    empty peer list: an empty ``to``/``from`` means *everywhere*.
    """
    policies = [
        _policy(NP_DEFAULT_DENY, name, ["Ingress", "Egress"]),
        _policy(
            NP_SAME_NAMESPACE,
            name,
            ["Ingress", "Egress"],
            ingress=[{"from": [{"podSelector": {}}]}],
            egress=[{"to": [{"podSelector": {}}]}],
        ),
        _policy(
            NP_DNS,
            name,
            ["Egress"],
            egress=[
                {
                    "to": [
                        {
                            **_namespace_peer(settings.dns_namespace),
                            "podSelector": {"matchLabels": dict(settings.dns_pod_labels)},
                        }
                    ],
                    "ports": _dns_ports(53),
                },
                # A DNS server outside the pod network (a host process behind a selector-less Service):
                # policies see its address and port after kube-proxy's translation.
                *(
                    [
                        {
                            "to": [{"ipBlock": {"cidr": c}} for c in settings.dns_cidrs],
                            "ports": _dns_ports(settings.dns_port),
                        }
                    ]
                    if settings.dns_cidrs
                    else []
                ),
            ],
        ),
    ]
    storage_peers: list[Manifest] = [{"ipBlock": {"cidr": cidr}} for cidr in settings.storage_cidrs]
    if settings.storage_namespace:
        storage_peers.append(_namespace_peer(settings.storage_namespace))
    if storage_peers:
        policies.append(
            _policy(
                NP_STORAGE,
                name,
                ["Egress"],
                egress=[{"to": storage_peers, "ports": [{"protocol": "TCP", "port": settings.storage_port}]}],
            )
        )
    if settings.platform_egress:
        # One rule per service: its peers on its port only (rules are ORed, peers and ports within one ANDed).
        policies.append(
            _policy(NP_PLATFORM, name, ["Egress"], egress=[_platform_rule(peer) for peer in settings.platform_egress])
        )
    if settings.ingress_namespace:
        policies.append(
            _policy(
                NP_INGRESS_CONTROLLER,
                name,
                ["Ingress"],
                ingress=[{"from": [_namespace_peer(settings.ingress_namespace)]}],
            )
        )
    if spec.consortium:
        # Only the operator labels namespaces with a consortium, and tenant
        # admins cannot edit namespaces, so this selector cannot be forged.
        members = {
            "namespaceSelector": {"matchLabels": {labels.CONSORTIUM: _label_value(spec.consortium, "spec.consortium")}}
        }
        # Outgoing traffic to fellow members is always allowed: whether it gets
        # in is each receiving hospital's own allowConsortiumIngress.
        policies.append(_policy(NP_CONSORTIUM_EGRESS, name, ["Egress"], egress=[{"to": [members]}]))
        if spec.network.allow_consortium_ingress:
            consortium = _policy(NP_CONSORTIUM, name, ["Ingress"], ingress=[{"from": [members]}])
            # Not the device gateways' pods: their own policy takes devices (members' too) on the device
            # ports from anywhere, and only the operator on the health port (which lists device ids).
            not_gateways = {"key": labels.COMPONENT, "operator": "NotIn", "values": [DEVICE_GATEWAY_COMPONENT]}
            consortium["spec"]["podSelector"] = {"matchExpressions": [not_gateways]}
            policies.append(consortium)
    if spec.network.allow_from_namespaces:
        selector = {
            "matchExpressions": [
                {
                    "key": labels.NAMESPACE_NAME,
                    "operator": "In",
                    "values": sorted(set(spec.network.allow_from_namespaces)),
                }
            ]
        }
        policies.append(
            _policy(NP_LISTED_NAMESPACES, name, ["Ingress"], ingress=[{"from": [{"namespaceSelector": selector}]}])
        )
    return policies


def admin_rules() -> list[Manifest]:
    """What a hospital administrator may do in the tenant namespace.

    Left out on purpose: pods/exec, attach and port-forward (an interactive path
    to patient data that bypasses the apps' audit trail), writes to network
    policies, quotas, limit ranges and RBAC (the tenant's isolation and budget
    are the operator's to keep), and anything cluster-scoped.
    """
    return [
        {
            "apiGroups": [""],
            "resources": sorted(
                ["configmaps", "persistentvolumeclaims", "pods", "secrets", "serviceaccounts", "services"]
            ),
            "verbs": WRITE,
        },
        {
            "apiGroups": [""],
            "resources": sorted(["endpoints", "events", "limitranges", "pods/log", "resourcequotas"]),
            "verbs": READ,
        },
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": WRITE},
        {
            "apiGroups": ["apps"],
            "resources": ["deployments/scale", "statefulsets/scale"],
            "verbs": ["get", "patch", "update"],
        },
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": READ},
        {"apiGroups": ["batch"], "resources": ["cronjobs", "jobs"], "verbs": WRITE},
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": WRITE},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": WRITE},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": WRITE},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": READ},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings", "roles"], "verbs": READ},
        {"apiGroups": ["medcloud.io"], "resources": ["appinstances", "devicegateways", "recordstores"], "verbs": WRITE},
        # Devices: enrol, approve and revoke (custom verbs the control API checks); no patch, so an
        # approval or a revocation goes through the API, which records who made it.
        {
            "apiGroups": ["medcloud.io"],
            "resources": ["devices"],
            "verbs": ["get", "list", "watch", "create", "delete", "approve", "revoke"],
        },
        {
            "apiGroups": ["medcloud.io"],
            "resources": ["appinstances/status", "devicegateways/status", "recordstores/status", "devices/status"],
            "verbs": ["get"],
        },
    ]


def build_admin_role(name: str) -> Manifest:
    """The tenant administrator Role (namespaced: nothing cluster-wide)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(ADMIN_ROLE_NAME, name, hospital_namespace(name)),
        "rules": admin_rules(),
    }


def _admin_subjects(spec: HospitalSpec) -> list[Manifest]:
    """``spec.admins`` as RBAC subjects: users, then groups, each sorted and once."""
    return [
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}
        for user in sorted(set(spec.admins.users))
    ] + [
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": group}
        for group in sorted(set(spec.admins.groups))
    ]


def build_admin_role_binding(name: str, spec: HospitalSpec) -> Manifest | None:
    """Binds ``spec.admins`` to the admin Role; None when there are no admins (the binding is pruned)."""
    subjects = _admin_subjects(spec)
    if not subjects:
        return None
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(ADMIN_ROLE_NAME, name, hospital_namespace(name)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ADMIN_ROLE_NAME},
        "subjects": subjects,
    }


def admin_cluster_role_name(name: str) -> str:
    """The ClusterRole (and ClusterRoleBinding) that lets the Hospital's admins read the Hospital itself."""
    return f"medcloud:hospital:{name}:admin"


def _owned_by_hospital(name: str, uid: str) -> Manifest:
    """Cluster-scoped metadata traced to the Hospital by labels, like the tenancy, and by an owner reference.

    The reference (allowed: both are cluster-scoped) lets the garbage
    collector revoke the grant should the Hospital ever go without the
    operator's deletion handler (a finalizer removed by force); these objects
    hold no data, so the cascade the tenancy avoids is what is wanted here.
    """
    meta = _meta(admin_cluster_role_name(name), name)
    meta["ownerReferences"] = [
        {
            "apiVersion": API_VERSION,
            "kind": "Hospital",
            "name": name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]
    return meta


def build_admin_cluster_role(name: str, uid: str) -> Manifest:
    """Get and watch on this one Hospital, by name: what the control API asks of its admins to show and follow it.

    The Hospital is cluster-scoped, so the namespaced admin Role cannot grant
    it. ``list`` is left out: a rule with ``resourceNames`` never authorizes
    listing the collection (the request names no object), only a list or
    watch narrowed to this name by ``fieldSelector=metadata.name``, and the
    control API's listing checks ``get`` per Hospital instead. The operator
    may write this role because it holds these verbs on every Hospital
    itself (RBAC's escalation check).
    """
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": _owned_by_hospital(name, uid),
        "rules": [
            {
                "apiGroups": ["medcloud.io"],
                "resources": ["hospitals"],
                "resourceNames": [name],
                "verbs": HOSPITAL_READ_VERBS,
            }
        ],
    }


def build_admin_cluster_role_binding(name: str, spec: HospitalSpec, uid: str) -> Manifest | None:
    """Binds ``spec.admins`` to the Hospital's admin ClusterRole; None when there are no admins (it is pruned)."""
    subjects = _admin_subjects(spec)
    if not subjects:
        return None
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": _owned_by_hospital(name, uid),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": admin_cluster_role_name(name),
        },
        "subjects": subjects,
    }


def build_admin_cluster_access(name: str, spec: HospitalSpec, uid: str) -> list[Manifest]:
    """The cluster-scoped part of admin access (the role, then its binding when there are admins).

    ``uid`` is the Hospital's, for the owner references.
    """
    binding = build_admin_cluster_role_binding(name, spec, uid)
    return [build_admin_cluster_role(name, uid), *([binding] if binding is not None else [])]


def build_operator_role_binding(name: str, settings: OperatorSettings) -> Manifest:
    """Binds the operator's own identity to the tenant Secrets ClusterRole, in this tenant namespace only.

    RecordStores put their credentials Secrets here. Tenant namespaces come and
    go with Hospitals, so the operator's static RBAC cannot name them; instead
    of Secrets in every namespace it holds ``bind`` on exactly this ClusterRole
    and grants itself Secrets namespace by namespace, as tenants are onboarded.
    """
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(OPERATOR_BINDING_NAME, name, hospital_namespace(name)),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": settings.tenant_secrets_cluster_role,
        },
        "subjects": [settings.operator_subject()],
    }


def build_tenancy(name: str, spec: HospitalSpec, settings: OperatorSettings) -> list[Manifest]:
    """Every object of the tenancy except the KEK, in the order they must be applied (namespace first)."""
    objects = [
        build_namespace(name, spec, settings),
        build_resource_quota(name, spec),
        build_limit_range(name, spec, settings.max_cpu_request),
        *build_network_policies(name, spec, settings),
        build_admin_role(name),
        build_operator_role_binding(name, settings),
    ]
    binding = build_admin_role_binding(name, spec)
    if binding is not None:
        objects.append(binding)
    return objects


# --------------------------------------------------------------------------- status


HOSPITAL_PARTS = (
    HospitalCondition.NAMESPACE_READY,
    HospitalCondition.NETWORK_ISOLATED,
    HospitalCondition.KEY_READY,
    HospitalCondition.ONBOARDED,
)


def next_status(
    previous: HospitalStatus,
    *,
    generation: int | None,
    namespace: str,
    checks: Mapping[HospitalCondition, Check],
    kek: KeyEncryptionKey | None,
    device_ca: DeviceCAStatus | None,
    quota_usage: Mapping[str, str] | None,
    spec_failed: bool,
    now: datetime,
) -> HospitalStatus:
    """The status after a reconcile whose parts came out as ``checks`` (see ``summarise``).

    Ready is True only when all four parts are True.
    """
    summary = summarise(
        previous,
        generation=generation,
        checks=checks,
        parts=HOSPITAL_PARTS,
        spec_failed=spec_failed,
        provisioning=Check(ConditionStatus.FALSE, Reason.PROVISIONING, "Provisioning the tenant."),
        ready=Check(ConditionStatus.TRUE, Reason.RECONCILED, f"Tenant namespace {namespace} is isolated and keyed."),
        now=now,
    )
    return HospitalStatus(
        phase=summary.phase,
        observed_generation=generation,
        conditions=summary.conditions,
        namespace=namespace,
        kek=kek if kek is not None else previous.kek,
        device_ca=device_ca,
        quota_usage=dict(quota_usage) if quota_usage is not None else dict(previous.quota_usage),
        message=summary.ready.message,
    )


def onboarding_check(wanted: list[onboarding.Child] | None, existing: list[onboarding.Child]) -> Check:
    """The Onboarded part: True unless an unfinished onboarding asked for children that do not exist."""
    if wanted is None:
        return Check(ConditionStatus.TRUE, Reason.RECONCILED, "No onboarding is unfinished.")
    absent = onboarding.missing(wanted, existing)
    if not absent:
        return Check(ConditionStatus.TRUE, Reason.RECONCILED, "Everything the onboarding asked for exists.")
    return Check(
        ConditionStatus.FALSE,
        HospitalReason.ONBOARDING_INCOMPLETE,
        f"Onboarding is not complete; missing: {onboarding.describe(absent)}. If the onboarding request was "
        "interrupted, repeat it (POST /v1/hospitals with the same body): it creates only what is missing.",
    )


def terminating_status(
    previous: HospitalStatus, *, generation: int | None, check: Check, now: datetime
) -> HospitalStatus:
    """The status while a deletion is under way or refused: phase Terminating, Ready False."""
    conditions = set_condition(
        previous.conditions, HospitalCondition.READY, check.status, check.reason, check.message, generation, now
    )
    return previous.model_copy(update={"phase": Phase.TERMINATING, "conditions": conditions, "message": check.message})
