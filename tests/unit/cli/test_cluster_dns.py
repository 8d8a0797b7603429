"""The real node's cluster DNS: CoreDNS's config, its RBAC, the kube-dns Service and what tenants may query."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from unittest import mock

from medcloud.models import HospitalSpec
from medcloud_cli.localcluster import binaries, clusterdns, netsetup, node, platformservices
from medcloud_cli.localcluster.cluster import SERVICE_CIDR, ClusterState
from medcloud_operator.builders.hospital import NP_DNS, build_network_policies
from medcloud_operator.settings import OperatorSettings


def test_coredns_answers_for_the_cluster_zones_on_the_node_address_and_forwards_nothing() -> None:
    corefile = clusterdns.corefile(40053, 40054, "/s/kubeconfig-coredns")
    assert corefile.startswith(".:40053 {")
    assert f"bind {netsetup.NODE_IP}" in corefile
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa" in corefile
    assert "kubeconfig /s/kubeconfig-coredns medcloud-dev" in corefile
    assert "ready 127.0.0.1:40054" in corefile
    # No upstream: a name outside the cluster is never asked of anyone off the machine.
    assert "forward" not in corefile
    assert "proxy" not in corefile


def test_coredns_may_only_list_and_watch_services_endpointslices_and_namespaces() -> None:
    role, binding = clusterdns.rbac()
    granted = {
        (group, res, verb)
        for r in role["rules"]
        for group in r["apiGroups"]
        for res in r["resources"]
        for verb in r["verbs"]
    }
    assert granted == {
        (g, res, verb)
        for g, res in (("", "services"), ("", "namespaces"), ("discovery.k8s.io", "endpointslices"))
        for verb in ("list", "watch")
    }
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": clusterdns.COREDNS_USER}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_kube_dns_is_a_selector_less_service_on_a_fixed_address_whose_endpoint_is_coredns_on_the_node() -> None:
    service, slice_ = clusterdns.service_manifests(40053)
    assert "selector" not in service["spec"]
    assert service["spec"]["clusterIP"] == clusterdns.DNS_IP
    assert ipaddress.ip_address(clusterdns.DNS_IP) in ipaddress.ip_network(SERVICE_CIDR)
    # Not one of the platform Services' fixed addresses.
    assert clusterdns.DNS_IP not in {s.cluster_ip for s in platformservices.HOST_PROCESSES.values()}
    assert {(p["protocol"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("UDP", 53, 40053),
        ("TCP", 53, 40053),
    }
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == clusterdns.DNS_SERVICE
    assert slice_["endpoints"][0]["addresses"] == [netsetup.NODE_IP]
    assert {(p["protocol"], p["port"]) for p in slice_["ports"]} == {("UDP", 40053), ("TCP", 40053)}


def test_the_kubelet_gives_pods_the_cluster_dns() -> None:
    config = node.kubelet_config(Path("/s"), Path("/ca.crt"), (Path("/c"), Path("/k")), 1, clusterdns.DNS_IP)
    assert (config["clusterDNS"], config["clusterDomain"]) == ([clusterdns.DNS_IP], "cluster.local")
    assert "clusterDNS" not in node.kubelet_config(Path("/s"), Path("/ca.crt"), (Path("/c"), Path("/k")), 1)


def test_coredns_is_a_real_node_binary_built_with_go_install() -> None:
    assert "coredns" in binaries.REAL_NODE_BINARIES
    assert binaries.component_for("coredns").version == binaries.COREDNS_VERSION


def test_tenants_may_query_coredns_on_the_node_at_its_own_port_from_the_recorded_state(tmp_path: Path) -> None:
    state = ClusterState(state_dir=str(tmp_path), server="", kubeconfig="", user_kubeconfig="", audit_log="")
    assert clusterdns.operator_config(state) == {}
    state.extra[clusterdns.STATE_KEY] = {"ip": clusterdns.DNS_IP, "node_port": 40053}
    assert clusterdns.operator_config(state) == {"dnsCidrs": [f"{netsetup.NODE_IP}/32"], "dnsPort": 40053}
    with mock.patch.dict(os.environ, platformservices.operator_env(state)):
        settings = OperatorSettings()
    assert (settings.dns_cidrs, settings.dns_port) == ([f"{netsetup.NODE_IP}/32"], 40053)
    spec = HospitalSpec.model_validate(
        {"displayName": "T", "institutionCode": "TESTDNS1", "tier": "township", "admins": {"groups": ["t"]}}
    )
    policies = {p["metadata"]["name"]: p for p in build_network_policies("t", spec, settings)}
    rules = policies[NP_DNS]["spec"]["egress"]
    assert rules[1] == {
        "to": [{"ipBlock": {"cidr": f"{netsetup.NODE_IP}/32"}}],
        "ports": [{"protocol": "UDP", "port": 40053}, {"protocol": "TCP", "port": 40053}],
    }
