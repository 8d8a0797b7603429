"""The Hospital builders: spec and settings in, the tenancy's manifests out (no cluster)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from medcloud.models import HospitalSpec
from medcloud_operator.builders import devicegateway as gw_b
from medcloud_operator.builders import hospital as b
from medcloud_operator.settings import OperatorSettings

NS = "hospital-riverton"


def make_spec(**overrides: Any) -> HospitalSpec:
    raw: dict[str, Any] = {"displayName": "Riverton City Hospital", "institutionCode": "RIV001CITY", "tier": "city"}
    raw.update(overrides)
    return HospitalSpec.model_validate(raw)


def settings(**overrides: Any) -> OperatorSettings:
    return OperatorSettings(**overrides)


def by_name(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects}


def test_namespace_is_named_labelled_and_pod_security_restricted() -> None:
    ns = b.build_namespace("riverton", make_spec(consortium="riverton-alliance"), settings())
    labels = ns["metadata"]["labels"]
    assert ns["metadata"]["name"] == NS
    assert labels["medcloud.io/hospital"] == "riverton"
    assert labels["medcloud.io/tier"] == "city"
    assert labels["medcloud.io/consortium"] == "riverton-alliance"
    assert labels["app.kubernetes.io/managed-by"] == "medcloud-operator"
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "latest"


def test_namespace_pins_the_configured_pod_security_version() -> None:
    ns = b.build_namespace("riverton", make_spec(), settings(pod_security_version="v1.35"))
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce-version"] == "v1.35"


def test_namespace_without_consortium_has_no_consortium_label() -> None:
    ns = b.build_namespace("riverton", make_spec(), settings())
    assert "medcloud.io/consortium" not in ns["metadata"]["labels"]


def test_a_consortium_name_too_long_for_a_label_is_an_invalid_spec() -> None:
    long_name = "a" * 64
    with pytest.raises(b.InvalidSpecError, match="63"):
        b.build_namespace("riverton", make_spec(consortium=long_name), settings())


def test_quota_defaults_come_from_the_model() -> None:
    hard = b.build_resource_quota("riverton", make_spec())["spec"]["hard"]
    assert hard == {
        "requests.cpu": "16",
        "requests.memory": "64Gi",
        "requests.storage": "1Ti",
        "pods": "200",
        "persistentvolumeclaims": "50",
    }


def test_quota_follows_the_spec() -> None:
    quota = b.build_resource_quota(
        "riverton", make_spec(quota={"cpu": "4", "memory": "8Gi", "storage": "100Gi", "pods": 20})
    )
    assert quota["metadata"]["namespace"] == NS
    assert quota["spec"]["hard"]["requests.cpu"] == "4"
    assert quota["spec"]["hard"]["requests.memory"] == "8Gi"
    assert quota["spec"]["hard"]["pods"] == "20"


def test_limit_range_defaults_containers_and_caps_them_at_the_quota() -> None:
    limits = b.build_limit_range("riverton", make_spec())["spec"]["limits"]
    assert limits == [
        {
            "type": "Container",
            "default": {"cpu": "500m", "memory": "512Mi"},
            "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
            "max": {"cpu": "16", "memory": "64Gi"},
        }
    ]


def test_limit_range_never_exceeds_a_small_quota() -> None:
    (limit,) = b.build_limit_range("tiny", make_spec(quota={"cpu": "50m", "memory": "256Mi"}))["spec"]["limits"]
    assert limit["default"] == {"cpu": "50m", "memory": "256Mi"}
    assert limit["defaultRequest"] == {"cpu": "50m", "memory": "128Mi"}
    assert limit["max"] == {"cpu": "50m", "memory": "256Mi"}


def test_the_operators_max_cpu_request_lowers_the_default_request_only() -> None:
    (limit,) = b.build_limit_range("riverton", make_spec(), max_cpu_request="25m")["spec"]["limits"]
    assert limit["defaultRequest"] == {"cpu": "25m", "memory": "128Mi"}
    assert limit["default"] == {"cpu": "500m", "memory": "512Mi"}
    objects = b.build_tenancy("riverton", make_spec(), settings(max_cpu_request="25m"))
    (built,) = [o for o in objects if o["kind"] == "LimitRange"]
    assert built["spec"]["limits"] == [limit]


def test_default_deny_covers_both_directions_with_no_rules() -> None:
    policies = by_name(b.build_network_policies("riverton", make_spec(), settings()))
    deny = policies[b.NP_DEFAULT_DENY]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_same_namespace_traffic_is_allowed_both_ways() -> None:
    spec = by_name(b.build_network_policies("riverton", make_spec(), settings()))[b.NP_SAME_NAMESPACE]["spec"]
    assert spec["ingress"] == [{"from": [{"podSelector": {}}]}]
    assert spec["egress"] == [{"to": [{"podSelector": {}}]}]


def test_dns_egress_goes_to_the_dns_pods_on_port_53_only() -> None:
    spec = by_name(b.build_network_policies("riverton", make_spec(), settings()))[b.NP_DNS]["spec"]
    assert spec["policyTypes"] == ["Egress"]
    (rule,) = spec["egress"]
    assert rule["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert rule["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def test_dns_egress_admits_a_dns_server_outside_the_pod_network_on_its_own_port_only() -> None:
    cfg = settings(dns_cidrs=["10.89.0.1/32"], dns_port=40053)
    spec = by_name(b.build_network_policies("riverton", make_spec(), cfg))[b.NP_DNS]["spec"]
    pods, node = spec["egress"]
    assert pods["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert node == {
        "to": [{"ipBlock": {"cidr": "10.89.0.1/32"}}],
        "ports": [{"protocol": "UDP", "port": 40053}, {"protocol": "TCP", "port": 40053}],
    }


def test_storage_egress_is_left_out_when_no_endpoint_is_configured() -> None:
    names = by_name(b.build_network_policies("riverton", make_spec(), settings()))
    assert b.NP_STORAGE not in names


def test_storage_egress_reaches_the_configured_cidrs_and_namespace_on_its_port() -> None:
    cfg = settings(storage_cidrs=["10.20.0.0/24"], storage_namespace="minio", storage_port=9443)
    spec = by_name(b.build_network_policies("riverton", make_spec(), cfg))[b.NP_STORAGE]["spec"]
    (rule,) = spec["egress"]
    assert rule["to"] == [
        {"ipBlock": {"cidr": "10.20.0.0/24"}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}},
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9443}]


PLATFORM = [
    {"name": "keyservice", "namespace": "medcloud-system", "pod_labels": {"app": "keys"}, "port": 8443},
    {"name": "broker", "cidrs": ["10.89.0.1/32"], "port": 8883},
    {"name": "exchange", "namespace": "medcloud-exchange", "port": 8080},
]


def test_platform_egress_is_one_rule_per_service_on_its_own_port() -> None:
    assert b.NP_PLATFORM not in by_name(b.build_network_policies("riverton", make_spec(), settings()))
    policy = by_name(b.build_network_policies("riverton", make_spec(), settings(platform_egress=PLATFORM)))
    spec = policy[b.NP_PLATFORM]["spec"]
    assert spec["policyTypes"] == ["Egress"]
    assert spec["egress"] == [
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "medcloud-system"}},
                    "podSelector": {"matchLabels": {"app": "keys"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": 8443}],
        },
        {"to": [{"ipBlock": {"cidr": "10.89.0.1/32"}}], "ports": [{"protocol": "TCP", "port": 8883}]},
        {
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "medcloud-exchange"}}}],
            "ports": [{"protocol": "TCP", "port": 8080}],
        },
    ]


def test_a_platform_peer_without_peers_is_refused_not_turned_into_everywhere() -> None:
    with pytest.raises(ValidationError, match="set namespace or cidrs"):
        settings(platform_egress=[{"name": "keyservice", "port": 8443}])
    with pytest.raises(ValidationError, match="pod_labels need a namespace"):
        settings(platform_egress=[{"name": "broker", "cidrs": ["10.0.0.1/32"], "pod_labels": {"a": "b"}, "port": 1}])


def test_ingress_controller_namespace_is_allowed_in_and_can_be_turned_off() -> None:
    spec = by_name(b.build_network_policies("riverton", make_spec(), settings()))[b.NP_INGRESS_CONTROLLER]["spec"]
    assert spec["ingress"] == [
        {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]}
    ]
    names = by_name(b.build_network_policies("riverton", make_spec(), settings(ingress_namespace="")))
    assert b.NP_INGRESS_CONTROLLER not in names


def test_consortium_members_are_selected_by_the_consortium_label_both_ways() -> None:
    spec = make_spec(consortium="riverton-alliance")
    policies = by_name(b.build_network_policies("riverton", spec, settings()))
    members = [{"namespaceSelector": {"matchLabels": {"medcloud.io/consortium": "riverton-alliance"}}}]
    assert policies[b.NP_CONSORTIUM]["spec"]["ingress"] == [{"from": members}]
    # Every pod of the hospital but its device gateways', which admit devices on their own terms.
    assert policies[b.NP_CONSORTIUM]["spec"]["podSelector"] == {
        "matchExpressions": [{"key": "app.kubernetes.io/component", "operator": "NotIn", "values": ["devicegateway"]}]
    }
    assert b.DEVICE_GATEWAY_COMPONENT == gw_b.COMPONENT
    assert policies[b.NP_CONSORTIUM_EGRESS]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [{"to": members}],
    }


def test_without_consortium_ingress_members_may_still_be_reached() -> None:
    spec = make_spec(consortium="riverton-alliance", network={"allowConsortiumIngress": False})
    names = by_name(b.build_network_policies("riverton", spec, settings()))
    assert b.NP_CONSORTIUM not in names
    assert b.NP_CONSORTIUM_EGRESS in names


def test_no_consortium_means_no_consortium_traffic() -> None:
    names = by_name(b.build_network_policies("riverton", make_spec(), settings()))
    assert b.NP_CONSORTIUM not in names
    assert b.NP_CONSORTIUM_EGRESS not in names


def test_listed_namespaces_are_allowed_in_by_their_immutable_name_label() -> None:
    spec = make_spec(network={"allowFromNamespaces": ["monitoring", "audit"]})
    policy = by_name(b.build_network_policies("riverton", spec, settings()))[b.NP_LISTED_NAMESPACES]["spec"]
    assert policy["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchExpressions": [
                            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["audit", "monitoring"]}
                        ]
                    }
                }
            ]
        }
    ]


def test_no_policy_ever_has_an_empty_peer_list() -> None:
    # An empty `from`/`to` means "from/to everywhere": it must never be emitted.
    cfg = settings(storage_cidrs=["10.0.0.1/32"], storage_namespace="minio", platform_egress=PLATFORM)
    spec = make_spec(consortium="c", network={"allowFromNamespaces": ["x"]})
    for policy in b.build_network_policies("riverton", spec, cfg):
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), policy["metadata"]["name"]
        for rule in policy["spec"].get("egress", []):
            assert rule.get("to"), policy["metadata"]["name"]


def test_admin_role_is_namespaced_and_grants_no_wildcards_exec_or_isolation_writes() -> None:
    role = b.build_admin_role("riverton")
    assert role["kind"] == "Role"
    assert role["metadata"]["namespace"] == NS
    writable: set[tuple[str, str]] = set()
    for rule in role["rules"]:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        assert "*" not in rule["apiGroups"]
        assert "escalate" not in rule["verbs"]
        assert "bind" not in rule["verbs"]
        assert "impersonate" not in rule["verbs"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                if {"create", "update", "patch", "delete"} & set(rule["verbs"]):
                    writable.add((group, resource))
                assert resource not in ("pods/exec", "pods/attach", "pods/portforward")
    # What an administrator runs their hospital with...
    for needed in [
        ("", "secrets"),
        ("", "configmaps"),
        ("", "services"),
        ("apps", "deployments"),
        ("medcloud.io", "recordstores"),
        ("medcloud.io", "devicegateways"),
        ("medcloud.io", "appinstances"),
    ]:
        assert needed in writable
    # ...but never the tenant's isolation, budget or permissions.
    for kept in [
        ("networking.k8s.io", "networkpolicies"),
        ("", "resourcequotas"),
        ("", "limitranges"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("medcloud.io", "recordstores/status"),
    ]:
        assert kept not in writable


def test_admin_binding_lists_users_and_groups_sorted_and_once() -> None:
    spec = make_spec(admins={"users": ["zhang@riverton", "li@riverton"], "groups": ["riverton-it"]})
    binding = b.build_admin_role_binding("riverton", spec)
    assert binding is not None
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": b.ADMIN_ROLE_NAME}
    assert binding["subjects"] == [
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "li@riverton"},
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "zhang@riverton"},
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "riverton-it"},
    ]


def test_no_admins_means_no_binding() -> None:
    assert b.build_admin_role_binding("riverton", make_spec()) is None


def test_the_operator_binds_itself_to_tenant_secrets_in_the_tenant_namespace_only() -> None:
    binding = b.build_operator_role_binding("riverton", settings(operator_namespace="city-ops"))
    assert binding["metadata"]["name"] == b.OPERATOR_BINDING_NAME
    assert binding["metadata"]["namespace"] == NS
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "medcloud-operator-tenant-secrets",
    }
    # The ServiceAccount lives where the operator runs unless told otherwise.
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "medcloud-operator", "namespace": "city-ops"}]


@pytest.mark.parametrize(
    ("overrides", "subject"),
    [
        (
            {"operator_subject_name": "op", "operator_subject_namespace": "elsewhere"},
            {"kind": "ServiceAccount", "name": "op", "namespace": "elsewhere"},
        ),
        (
            {"operator_subject_kind": "User", "operator_subject_name": "medcloud-operator-a"},
            {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "medcloud-operator-a"},
        ),
        (
            {"operator_subject_kind": "Group", "operator_subject_name": "operators", "operator_subject_namespace": "x"},
            {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "operators"},
        ),
    ],
)
def test_the_operator_subject_and_role_are_configurable(overrides: dict[str, Any], subject: dict[str, str]) -> None:
    cfg = settings(tenant_secrets_cluster_role="riverton-medcloud-operator-tenant-secrets", **overrides)
    binding = b.build_operator_role_binding("riverton", cfg)
    assert binding["subjects"] == [subject]
    assert binding["roleRef"]["name"] == "riverton-medcloud-operator-tenant-secrets"


def test_an_unknown_subject_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="operator_subject_kind"):
        settings(operator_subject_kind="Robot")


def test_tenancy_starts_with_the_namespace_and_labels_every_object() -> None:
    spec = make_spec(admins={"users": ["li"]}, consortium="c")
    objects = b.build_tenancy("riverton", spec, settings(storage_cidrs=["10.0.0.0/8"]))
    assert objects[0]["kind"] == "Namespace"
    kinds = {o["kind"] for o in objects}
    assert kinds == {"Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy", "Role", "RoleBinding"}
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "medcloud-operator"
        assert labels["app.kubernetes.io/component"] == "tenancy"
        assert labels["medcloud.io/hospital"] == "riverton"
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NS
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names))
    # The operator's own binding is there with or without admins.
    assert ("RoleBinding", b.OPERATOR_BINDING_NAME) in names
    bare = b.build_tenancy("riverton", make_spec(), settings())
    assert [o["metadata"]["name"] for o in bare if o["kind"] == "RoleBinding"] == [b.OPERATOR_BINDING_NAME]


def test_builders_are_pure() -> None:
    spec = make_spec(admins={"users": ["li"]})
    cfg = settings()
    assert b.build_tenancy("riverton", spec, cfg) == b.build_tenancy("riverton", spec, cfg)


UID = "6f1c2a9e-0000-4000-8000-000000000001"


def test_admin_cluster_role_lets_admins_get_and_watch_this_hospital_only() -> None:
    role = b.build_admin_cluster_role("riverton", UID)
    meta = role["metadata"]
    assert (role["kind"], meta["name"]) == ("ClusterRole", "medcloud:hospital:riverton:admin")
    assert "namespace" not in meta
    assert meta["labels"]["app.kubernetes.io/component"] == "tenancy"
    assert meta["labels"]["medcloud.io/hospital"] == "riverton"
    # Cluster-scoped, like its owner: the garbage collector revokes it should the Hospital go without the operator.
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "medcloud.io/v1alpha1",
            "kind": "Hospital",
            "name": "riverton",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]
    # By name: no list (a plain list names no object), no writes, nothing else cluster-wide.
    assert role["rules"] == [
        {
            "apiGroups": ["medcloud.io"],
            "resources": ["hospitals"],
            "resourceNames": ["riverton"],
            "verbs": ["get", "watch"],
        }
    ]


def test_admin_cluster_role_binding_binds_the_same_admins_as_the_namespace() -> None:
    spec = make_spec(admins={"users": ["zhang@riverton", "li@riverton", "li@riverton"], "groups": ["riverton-it"]})
    binding = b.build_admin_cluster_role_binding("riverton", spec, UID)
    namespaced = b.build_admin_role_binding("riverton", spec)
    assert binding is not None
    assert namespaced is not None
    assert (binding["kind"], binding["metadata"]["name"]) == ("ClusterRoleBinding", "medcloud:hospital:riverton:admin")
    assert "namespace" not in binding["metadata"]
    assert binding["metadata"]["ownerReferences"][0]["uid"] == UID
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "medcloud:hospital:riverton:admin",
    }
    assert binding["subjects"] == namespaced["subjects"]
    assert [s["name"] for s in binding["subjects"]] == ["li@riverton", "zhang@riverton", "riverton-it"]


def test_admin_cluster_access_is_the_role_and_a_binding_only_while_there_are_admins() -> None:
    with_admins = b.build_admin_cluster_access("riverton", make_spec(admins={"groups": ["riverton-it"]}), UID)
    assert [o["kind"] for o in with_admins] == ["ClusterRole", "ClusterRoleBinding"]
    assert b.build_admin_cluster_role_binding("riverton", make_spec(), UID) is None
    assert [o["kind"] for o in b.build_admin_cluster_access("riverton", make_spec(), UID)] == ["ClusterRole"]
    spec = make_spec(admins={"users": ["li"]})
    assert b.build_admin_cluster_access("riverton", spec, UID) == b.build_admin_cluster_access("riverton", spec, UID)
