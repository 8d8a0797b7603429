"""The platform Services contract: manifests and the operator's settings from a recorded state (no servers)."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from unittest import mock

from medcloud.models import HospitalSpec
from medcloud_cli.localcluster import netsetup, platformservices
from medcloud_cli.localcluster.cluster import SERVICE_CIDR, ClusterState, MinioInfo
from medcloud_operator.builders.hospital import build_network_policies
from medcloud_operator.settings import OperatorSettings


def _state(tmp_path: Path, published: dict[str, int]) -> ClusterState:
    state = ClusterState(
        state_dir=str(tmp_path),
        server="https://10.89.0.1:6443",
        kubeconfig="",
        user_kubeconfig="",
        audit_log="",
        minio=MinioInfo(endpoint="10.89.0.1:21000", access_key="root", secret_key="s3cret"),
    )
    for process, port in published.items():
        platformservices.record(state, process, port)
    return state


def test_fixed_addresses_sit_in_the_static_band_of_the_service_range_and_are_distinct() -> None:
    network = ipaddress.ip_network(SERVICE_CIDR)
    addresses = [s.cluster_ip for s in platformservices.HOST_PROCESSES.values()]
    addresses += [platformservices.KEY_SERVICE_IP, platformservices.API_IP]
    assert len(set(addresses)) == len(addresses)
    for address in addresses:
        ip = ipaddress.ip_address(address)
        assert ip in network
        # The API server allocates from the upper band first; the lowest 256 are for fixed requests.
        assert int(ip) - int(network.network_address) < 256
        assert address != "10.96.0.1"  # the kubernetes Service


def test_a_service_points_at_the_server_on_the_node_address_through_its_own_slice() -> None:
    service, slice_ = platformservices.service_manifests(platformservices.MINIO, 21000)
    assert "selector" not in service["spec"]
    assert service["spec"]["clusterIP"] == "10.96.0.20"
    assert service["spec"]["ports"][0]["port"] == 9000
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "minio"
    # Not the EndpointSlice controller's: it would delete a slice of a selector-less Service it does not own.
    assert slice_["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] != "endpointslice-controller.k8s.io"
    assert slice_["endpoints"] == [{"addresses": [netsetup.NODE_IP], "conditions": {"ready": True}}]
    assert slice_["ports"] == [{"name": "tcp", "protocol": "TCP", "port": 21000}]


def test_without_a_node_nothing_is_published_and_the_operator_keeps_its_settings(tmp_path: Path) -> None:
    assert platformservices.operator_env(_state(tmp_path, {})) == {}
    assert platformservices.minio_url(_state(tmp_path, {})) is None


def test_the_operator_settings_name_the_services_for_pods_and_the_node_ports_for_policies(tmp_path: Path) -> None:
    state = _state(tmp_path, {"minio": 21000, "mosquitto": 21001, "postgres": 21002})
    with mock.patch.dict(os.environ, platformservices.operator_env(state)):
        settings = OperatorSettings()
    assert settings.minio_public_endpoint == "http://10.96.0.20:9000"
    assert (settings.broker_host, settings.broker_port) == ("10.96.0.21", 8883)
    assert settings.storage_cidrs == ["10.89.0.1/32"]
    assert settings.storage_port == 21000
    # The broker only: PostgreSQL is the exchange's.
    assert [(p.name, p.cidrs, p.port) for p in settings.platform_egress] == [("mqtt", ["10.89.0.1/32"], 21001)]

    spec = HospitalSpec.model_validate(
        {"displayName": "A", "institutionCode": "UNITA1", "tier": "county", "admins": {"groups": ["a"]}}
    )
    rules = [
        (peer["ipBlock"]["cidr"], port["port"])
        for policy in build_network_policies("a", spec, settings)
        for rule in policy["spec"].get("egress", [])
        for peer in rule.get("to", [])
        if "ipBlock" in peer
        for port in rule["ports"]
    ]
    # Exactly MinIO and the broker on the node address, each on its own port: no other port of the node.
    assert sorted(rules) == [("10.89.0.1/32", 21000), ("10.89.0.1/32", 21001)]


def test_a_published_exchange_joins_the_tenants_egress(tmp_path: Path) -> None:
    env = platformservices.operator_env(_state(tmp_path, {"mosquitto": 21001, "exchange": 21003}))
    assert json.loads(env["MEDCLOUD_PLATFORM_EGRESS"]) == [
        {"name": "mqtt", "cidrs": ["10.89.0.1/32"], "port": 21001},
        {"name": "exchange", "cidrs": ["10.89.0.1/32"], "port": 21003},
    ]
