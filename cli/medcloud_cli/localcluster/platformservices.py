"""The local cluster's platform servers as pods see them: Services on fixed addresses, endpoints on the node.

MinIO, the MQTT broker, PostgreSQL and the consortium exchange run as host
processes. Pods on the real node have routes to the pod and service ranges
only, so with a real node those servers also listen on the node address
(``netsetup.NODE_IP``, a local-only /32), and each gets a selector-less
Service in ``medcloud-platform`` whose EndpointSlice points at that address
and the server's port. kube-proxy translates the Service address, so a pod
opens ``10.96.0.20:9000`` and reaches MinIO on ``10.89.0.1:<its port>``.

The Service addresses are fixed (the static band at the bottom of the service
range): the node has no cluster DNS, so pods are given addresses, not names.
The Service names are stable too (``minio.medcloud-platform.svc``), for the
day a DNS server runs; the broker's serving certificate names both.

NetworkPolicies see the translated destination: a tenant's egress rule for a
platform server is the node address and the server's own port
(:func:`operator_env`), never the Service's address or port.

This module is the contract other parts build on: :data:`MINIO`,
:data:`BROKER`, :data:`POSTGRES`, :data:`EXCHANGE`, :data:`KEY_SERVICE` and
:data:`API` name the addresses; :func:`endpoints` reads what a running
cluster published (``state.json``'s ``extra["platformServices"]``);
:func:`operator_env` turns that into the operator's settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from medcloud_cli.localcluster import clusterdns, netsetup

if TYPE_CHECKING:
    from medcloud_cli.localcluster.cluster import ClusterState, LocalCluster

PLATFORM_NAMESPACE = "medcloud-platform"
MANAGED_BY = "medcloud-localcluster"
STATE_KEY = "platformServices"
NODE_CIDR = f"{netsetup.NODE_IP}/32"


@dataclass(frozen=True)
class PlatformService:
    """A platform server's Service: its name in ``medcloud-platform``, fixed address and port as pods use it."""

    name: str
    cluster_ip: str
    port: int

    @property
    def dns_name(self) -> str:
        return f"{self.name}.{PLATFORM_NAMESPACE}.svc"


# In the service range 10.96.0.0/16 (cluster.SERVICE_CIDR), below 10.96.1.0: the band the API server
# hands out only when asked for an address, so no other Service ever takes one of these first.
MINIO = PlatformService("minio", "10.96.0.20", 9000)
BROKER = PlatformService("mqtt", "10.96.0.21", 8883)
POSTGRES = PlatformService("postgres", "10.96.0.22", 5432)
EXCHANGE = PlatformService("exchange", "10.96.0.23", 8080)
# The chart's own Services when `dev up` installs it (chart mode): fixed too, for the stores'
# Secrets (MEDCLOUD_KEY_SERVICE_URL) and for the host.
KEY_SERVICE_IP = "10.96.0.30"
API_IP = "10.96.0.31"
HOST_PROCESSES = {"minio": MINIO, "mosquitto": BROKER, "postgres": POSTGRES, "exchange": EXCHANGE}
"""The cluster's process name of each platform server, and its Service."""


@dataclass(frozen=True)
class PublishedService:
    """A platform server as published: its Service (for pods) and where it listens on the node (for policies)."""

    name: str
    cluster_ip: str
    port: int
    dns_name: str
    node_ip: str
    node_port: int

    @property
    def address(self) -> str:
        """``ip:port`` a pod opens."""
        return f"{self.cluster_ip}:{self.port}"


def service_manifests(service: PlatformService, node_port: int) -> list[dict[str, Any]]:
    """The Service (no selector) and its one-endpoint EndpointSlice on the node address."""
    labels = {"app.kubernetes.io/part-of": "medcloud", "app.kubernetes.io/managed-by": MANAGED_BY}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service.name, "namespace": PLATFORM_NAMESPACE, "labels": labels},
            "spec": {
                "clusterIP": service.cluster_ip,
                "ports": [{"name": "tcp", "protocol": "TCP", "port": service.port, "targetPort": node_port}],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{service.name}-node",
                "namespace": PLATFORM_NAMESPACE,
                # The service-name label ties the slice to the Service; managed-by keeps the
                # EndpointSlice controllers off it (they only manage slices they own).
                "labels": {
                    **labels,
                    "kubernetes.io/service-name": service.name,
                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [netsetup.NODE_IP], "conditions": {"ready": True}}],
            "ports": [{"name": "tcp", "protocol": "TCP", "port": node_port}],
        },
    ]


def namespace_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": PLATFORM_NAMESPACE,
            # Nothing runs here (the servers are host processes); should anything, it is restricted.
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
        },
    }


def publish(cluster: LocalCluster, process: str) -> PublishedService:
    """Publish the host process ``process`` (a key of :data:`HOST_PROCESSES`) to pods; recorded in the state."""
    state = cluster._require_state()
    service = HOST_PROCESSES[process]
    node_port = state.ports[process]
    items = [namespace_manifest(), *service_manifests(service, node_port)]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return record(state, process, node_port)


def record(state: ClusterState, process: str, node_port: int) -> PublishedService:
    """Write into ``state`` that ``process`` is published, listening on ``node_port`` of the node address."""
    service = HOST_PROCESSES[process]
    published = PublishedService(
        name=service.name,
        cluster_ip=service.cluster_ip,
        port=service.port,
        dns_name=service.dns_name,
        node_ip=netsetup.NODE_IP,
        node_port=node_port,
    )
    state.extra.setdefault(STATE_KEY, {})[process] = asdict(published)
    return published


def endpoints(state: ClusterState) -> dict[str, PublishedService]:
    """What the cluster published, by process name (minio, mosquitto, postgres, exchange); empty without a node."""
    return {name: PublishedService(**raw) for name, raw in (state.extra.get(STATE_KEY) or {}).items()}


def minio_url(state: ClusterState) -> str | None:
    """MinIO's URL as pods reach it (RecordStores' credentials Secrets), or None when not published."""
    minio = endpoints(state).get("minio")
    if minio is None or state.minio is None:
        return None
    return f"{'https' if state.minio.secure else 'http'}://{minio.address}"


def operator_env(state: ClusterState) -> dict[str, str]:
    """The operator's settings for what pods reach through the platform Services (empty without a node).

    - ``MEDCLOUD_MINIO_PUBLIC_ENDPOINT``: MinIO's Service URL, written into the stores' Secrets;
    - ``MEDCLOUD_STORAGE_CIDRS`` / ``MEDCLOUD_STORAGE_PORT``: tenants' storage egress, MinIO on the node;
    - ``MEDCLOUD_BROKER_HOST`` / ``MEDCLOUD_BROKER_PORT``: the broker's Service, for device gateways;
    - ``MEDCLOUD_PLATFORM_EGRESS``: the broker (and the exchange when published) on the node, each on
      its own port. PostgreSQL is not in it: only the exchange uses it, never a tenant pod;
    - ``MEDCLOUD_DNS_CIDRS`` / ``MEDCLOUD_DNS_PORT``: the cluster DNS on the node (clusterdns.py).
    """
    published = endpoints(state)
    env: dict[str, str] = {}
    if "minio" in published and (url := minio_url(state)):
        env["MEDCLOUD_MINIO_PUBLIC_ENDPOINT"] = url
        env["MEDCLOUD_STORAGE_CIDRS"] = json.dumps([NODE_CIDR])
        env["MEDCLOUD_STORAGE_PORT"] = str(published["minio"].node_port)
    if broker := published.get("mosquitto"):
        env["MEDCLOUD_BROKER_HOST"] = broker.cluster_ip
        env["MEDCLOUD_BROKER_PORT"] = str(broker.port)
    egress = platform_egress(published)
    if egress:
        env["MEDCLOUD_PLATFORM_EGRESS"] = json.dumps(egress)
    if dns := clusterdns.operator_config(state):
        env["MEDCLOUD_DNS_CIDRS"] = json.dumps(dns["dnsCidrs"])
        env["MEDCLOUD_DNS_PORT"] = str(dns["dnsPort"])
    return env


def platform_egress(published: dict[str, PublishedService]) -> list[dict[str, Any]]:
    """Tenant egress peers (``EgressPeer`` shape) for the published broker and exchange."""
    return [
        {"name": published[process].name, "cidrs": [NODE_CIDR], "port": published[process].node_port}
        for process in ("mosquitto", "exchange")
        if process in published
    ]
