"""Cluster DNS for the real node: CoreDNS as a host process, reached by pods through the ``kube-dns`` Service.

Pods find the consortium exchange (and any Service) by name
(``medcloud-exchange-<consortium>.medcloud-system.svc``), so the node's kubelet
needs a ``clusterDNS``. CoreDNS runs beside the other node processes with its
``kubernetes`` plugin, under an identity of its own that may only list and
watch Services, EndpointSlices and Namespaces (:func:`rbac`). It answers for
``cluster.local`` and the reverse zones and for nothing else: there is no
``forward``, so no query ever leaves the machine.

It listens on the node address (``netsetup.NODE_IP``, a local-only /32) on a
free port; a selector-less Service ``kube-system/kube-dns`` on the fixed
address :data:`DNS_IP` (port 53, UDP and TCP) has an EndpointSlice pointing
there, exactly like the platform Services (platformservices.py), and the
kubelet's ``clusterDNS`` is that address. NetworkPolicies see the translated
destination, so tenants' DNS egress rule admits the node address on CoreDNS's
own port (:func:`operator_config`, the operator's ``dns_cidrs``/``dns_port``),
not the API server or anything else on the node.
"""

from __future__ import annotations

import json
import urllib.request
from typing import TYPE_CHECKING, Any

from medcloud_cli.localcluster import netsetup
from medcloud_cli.localcluster.process import free_port

if TYPE_CHECKING:
    from medcloud_cli.localcluster.cluster import ClusterState, LocalCluster

CLUSTER_DOMAIN = "cluster.local"
DNS_NAMESPACE = "kube-system"
DNS_SERVICE = "kube-dns"
# In the static band of the service range (cluster.SERVICE_CIDR), the address kubeadm gives kube-dns.
DNS_IP = "10.96.0.10"
COREDNS_USER = "system:medcloud-coredns"
MANAGED_BY = "medcloud-localcluster"
STATE_KEY = "clusterDNS"
NODE_CIDR = f"{netsetup.NODE_IP}/32"


def corefile(port: int, ready_port: int, kubeconfig: str) -> str:
    """Authoritative for the cluster zones only; readiness on loopback once the plugin has synced."""
    return f""".:{port} {{
    bind {netsetup.NODE_IP}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} medcloud-dev
        pods disabled
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
    loadbalance
}}
"""


def rbac() -> list[dict[str, Any]]:
    """What the ``kubernetes`` plugin reads, and nothing more (no pods: ``pods disabled``)."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "medcloud-coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "medcloud-coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "medcloud-coredns"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}],
        },
    ]


def service_manifests(node_port: int) -> list[dict[str, Any]]:
    """``kube-system/kube-dns`` on :data:`DNS_IP`:53 (UDP and TCP), its endpoint CoreDNS on the node address."""
    labels = {"app.kubernetes.io/part-of": "medcloud", "app.kubernetes.io/managed-by": MANAGED_BY}
    ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": DNS_SERVICE, "namespace": DNS_NAMESPACE, "labels": labels},
            "spec": {
                "clusterIP": DNS_IP,
                "ports": [{"name": n, "protocol": p, "port": 53, "targetPort": node_port} for n, p in ports],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{DNS_SERVICE}-node",
                "namespace": DNS_NAMESPACE,
                "labels": {
                    **labels,
                    "kubernetes.io/service-name": DNS_SERVICE,
                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [netsetup.NODE_IP], "conditions": {"ready": True}}],
            "ports": [{"name": n, "protocol": p, "port": node_port} for n, p in ports],
        },
    ]


def start(cluster: LocalCluster) -> int:
    """Start CoreDNS, publish ``kube-dns``; returns the node port it listens on (recorded in the state)."""
    state = cluster._require_state()
    for manifest in rbac():
        cluster._kubectl_apply(manifest)
    kubeconfig = cluster._component_kubeconfig("coredns", COREDNS_USER)
    port, ready_port = free_port(), free_port()
    config = cluster.state_dir / "Corefile"
    config.write_text(corefile(port, ready_port, str(kubeconfig)))
    proc = cluster.spawn("coredns", [str(cluster.binary("coredns")), "-conf", str(config)], (port, ready_port))
    # Ready once the kubernetes plugin has listed Services and EndpointSlices: it answers for them from then on.
    proc.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{ready_port}/ready"), 60)
    items = service_manifests(port)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    state.ports["coredns"] = port
    state.extra[STATE_KEY] = {"ip": DNS_IP, "domain": CLUSTER_DOMAIN, "node_ip": netsetup.NODE_IP, "node_port": port}
    return port


def operator_config(state: ClusterState) -> dict[str, Any]:
    """The operator's ``dns_cidrs``/``dns_port`` (chart values' camelCase) for tenants' DNS egress; empty without."""
    published = state.extra.get(STATE_KEY)
    if not published:
        return {}
    return {"dnsCidrs": [NODE_CIDR], "dnsPort": int(published["node_port"])}


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
        return bool(response.status == 200)
