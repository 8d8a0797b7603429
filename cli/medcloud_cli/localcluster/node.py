"""A real Kubernetes node beside the local control plane: containerd, kubelet, kube-proxy, kube-router.

Pods scheduled here run as real containers (runc, the CNI bridge plugin), so
an image that does not exist, a process that exits or a probe that fails shows
as it would in production, and NetworkPolicies are enforced (kube-router,
firewall only). It needs Linux and root; `REAL-NODE-FACTS` in the project's
notes and docs/local-cluster.md say why each setting is what it is.

Only one real node can run on a machine at a time: its bridges, node address
and a few paths (``/run/containerd/s``, ``/var/lib/kubelet/device-plugins``)
are fixed. Starting a second one fails at once (the node bridge exists).

Lifecycle, driven by `LocalCluster`:
``prepare()`` before the API server (it binds to the node address),
``start()`` after the controllers, ``stop_workloads()`` before the processes
stop, and ``teardown()`` after, which undoes every side effect on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from medcloud_cli.localcluster import binaries, clusterdns, images, netsetup
from medcloud_cli.localcluster.process import StartupError, free_port, pid_alive

if TYPE_CHECKING:
    from medcloud_cli.localcluster.cluster import LocalCluster

NODE_NAME = "medcloud-node"
# KWOK nodes carry this taint while a real node runs, so real workloads never
# land on a fake node; scale objects (many pods that need no process) tolerate it.
KWOK_TAINT = {"key": "medcloud.io/fake-node", "value": "kwok", "effect": "NoSchedule"}
KWOK_TOLERATION = {"key": "medcloud.io/fake-node", "operator": "Equal", "value": "kwok", "effect": "NoSchedule"}
KUBELET_PORT = 10250
APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"
KUBE_ROUTER_USER = "system:kube-router"
NODE_PROCESSES = ("kube-router", "coredns", "kube-proxy", "kubelet", "containerd")
CONTAINERD_NAMESPACE = "k8s.io"
PAUSE_IMAGE = images.PAUSE_REFERENCE


def real_node_supported() -> tuple[bool, str]:
    """Whether this machine can run the real node, and why not."""
    if not sys.platform.startswith("linux"):
        return False, "the real node needs Linux"
    if os.geteuid() != 0:
        return False, "the real node needs root (bridges, iptables, cgroups, mounts)"
    for tool in ("containerd", "ctr", "iptables", "ipset"):
        if not any(Path(d, tool).exists() for d in ("/usr/bin", "/usr/sbin", "/bin", "/sbin")):
            return False, f"{tool} is not installed (scripts/bootstrap.sh installs it)"
    if not Path("/usr/lib/cni/bridge").exists():
        return False, "containernetworking-plugins is not installed"
    return True, ""


def containerd_config(state: Path) -> str:
    root = state / "containerd"
    return f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
[grpc]
  address = "{root / "containerd.sock"}"
[ttrpc]
  address = "{root / "containerd-ttrpc.sock"}"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: runc must not lower oom_score_adj below ours.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
        Root = "{root / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{state / "cni" / "conf"}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{root / "registries"}"
"""


# Every registry resolves to a closed loopback port: images come from `ctr import`
# only, and a pull (an IfNotPresent image nobody imported) must never send a
# DNS query or a connection off the machine.
NO_REGISTRY_HOSTS = """server = "http://127.0.0.1:1"
[host."http://127.0.0.1:1"]
  capabilities = ["pull", "resolve"]
"""


def cni_conflist(state: Path, service_cidr: str) -> dict[str, Any]:
    """The bridge plugin; pods get routes to the pod and service ranges only (no default gateway)."""
    return {
        "cniVersion": "1.0.0",
        "name": netsetup.CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": netsetup.POD_BRIDGE,
                "isGateway": True,
                "isDefaultGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(state / "cni" / "net"),
                    "ranges": [[{"subnet": netsetup.POD_CIDR}]],
                    "routes": [{"dst": service_cidr}],
                },
            }
        ],
    }


def kubelet_config(
    state: Path, ca_file: Path, serving: tuple[Path, Path], healthz_port: int, cluster_dns: str | None = None
) -> dict[str, Any]:
    kubelet = state / "kubelet"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": netsetup.NODE_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(serving[0]),
        "tlsPrivateKeyFile": str(serving[1]),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        # Kubernetes 1.35 refuses cgroup v1 unless told; these machines have it.
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{state / 'containerd' / 'containerd.sock'}",
        "podCIDR": netsetup.POD_CIDR,
        # Pods resolve through the cluster DNS (clusterdns.py), never the machine's resolver:
        # this file is what a dnsPolicy Default pod gets, a nameserver that answers nothing.
        "resolvConf": str(kubelet / "resolv.conf"),
        **({"clusterDNS": [cluster_dns], "clusterDomain": clusterdns.CLUSTER_DOMAIN} if cluster_dns else {}),
        "podLogsDir": str(kubelet / "pod-logs"),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        # Images come from `ctr import`, never a registry: garbage collection must not drop them,
        # and a busy developer disk must not evict the platform.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "maxPods": 60,
    }


def kube_proxy_config(kubeconfig: Path, cluster_cidr: str, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": cluster_cidr,
        "bindAddress": netsetup.NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{netsetup.NODE_IP}/32"],
        # Leave the machine's conntrack sysctls alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False},
    }


def node_rbac() -> list[dict[str, Any]]:
    """What kubeadm would add: the API server's kubelet client, and kube-router's read access."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "medcloud-apiserver-kubelet-client"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kubelet-api-admin",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": APISERVER_KUBELET_CLIENT}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "medcloud-kube-router"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["namespaces", "pods", "services", "nodes", "endpoints"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["networking.k8s.io"],
                    "resources": ["networkpolicies"],
                    "verbs": ["get", "list", "watch"],
                },
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "medcloud-kube-router"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "medcloud-kube-router"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBE_ROUTER_USER}],
        },
    ]


def ctr_args(state: Path, *args: str) -> list[str]:
    return ["ctr", "--address", str(state / "containerd" / "containerd.sock"), "-n", CONTAINERD_NAMESPACE, *args]


def shim_pids(state: Path) -> list[int]:
    """containerd shims serving this node's containerd (they leave its process group)."""
    address = str(state / "containerd" / "containerd.sock")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and address.encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def kill_workloads(state: Path) -> None:
    """Kill every container and shim of this node's containerd (containerd still running or not)."""
    socket = state / "containerd" / "containerd.sock"
    if socket.exists():
        listing = subprocess.run(ctr_args(state, "tasks", "ls", "-q"), capture_output=True, text=True, check=False)
        for task in listing.stdout.split():
            subprocess.run(ctr_args(state, "tasks", "kill", "-s", "SIGKILL", task), capture_output=True, check=False)
        deadline = time.monotonic() + 10
        for task in listing.stdout.split():
            while time.monotonic() < deadline:
                done = subprocess.run(ctr_args(state, "tasks", "delete", task), capture_output=True, check=False)
                if done.returncode == 0:
                    break
                time.sleep(0.2)
    for pid in shim_pids(state):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in shim_pids(state)) and time.monotonic() < deadline:
        time.sleep(0.1)


class RealNode:
    """The real node of one `LocalCluster`; its state lives under ``<state>/node``."""

    def __init__(self, cluster: LocalCluster, service_cidr: str, with_network_policy: bool = True) -> None:
        self.cluster = cluster
        self.dir = cluster.state_dir / "node"
        self.service_cidr = service_cidr
        self.with_network_policy = with_network_policy
        self.footprint: netsetup.HostFootprint | None = None

    # -------------------------------------------------------------- before
    def prepare(self) -> None:
        """Record the machine's state and create the bridges (the API server binds to the node address)."""
        supported, why = real_node_supported()
        if not supported:
            raise StartupError(why)
        # A kept state folder (`dev down` without --purge) resumes the cluster:
        # what a crashed run of this folder left on the machine goes first (the
        # cluster refused to start if its processes still ran), and the address
        # leases of pods that died without a CNI DEL with it.
        teardown_node(self.dir, binaries.locate("kube-proxy"))
        shutil.rmtree(self.dir / "cni" / "net", ignore_errors=True)
        if netsetup.link_exists(netsetup.NODE_BRIDGE):
            raise StartupError(
                f"{netsetup.NODE_BRIDGE} exists: another real node runs on this machine (one at a time); "
                "stop it with `medcloud dev down` in its state folder"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        footprint = netsetup.HostFootprint.record(self.service_cidr)
        self.footprint = footprint
        # Saved before anything changes, so an interrupted start can still be undone.
        (self.dir / "footprint.json").write_text(json.dumps(footprint.to_json()))
        footprint.create_bridges()

    # --------------------------------------------------------------- start
    def start(self) -> None:
        cluster = self.cluster
        state = cluster._require_state()
        for manifest in node_rbac():
            cluster._kubectl_apply(manifest)
        self._start_containerd()
        pause = images.ensure_pause_archive(cluster.progress)
        images.import_archive(ctr_args(self.dir), pause)
        clusterdns.start(cluster)
        self._start_kubelet()
        self._start_kube_proxy()
        if self.with_network_policy:
            self._start_kube_router()
        self._taint_kwok_nodes()
        state.extra["node"] = {"name": NODE_NAME, "ip": netsetup.NODE_IP, "dir": str(self.dir)}

    def _start_containerd(self) -> None:
        (self.dir / "cni" / "conf").mkdir(parents=True, exist_ok=True)
        (self.dir / "cni" / "conf" / "10-medcloud.conflist").write_text(
            json.dumps(cni_conflist(self.dir, self.service_cidr), indent=2)
        )
        registries = self.dir / "containerd" / "registries" / "_default"
        registries.mkdir(parents=True, exist_ok=True)
        (registries / "hosts.toml").write_text(NO_REGISTRY_HOSTS)
        config = self.dir / "containerd.toml"
        config.write_text(containerd_config(self.dir))
        proc = self.cluster.spawn("containerd", ["containerd", "--config", str(config)], ())
        proc.wait_ready(
            lambda: subprocess.run(ctr_args(self.dir, "version"), capture_output=True, check=False).returncode == 0,
            30,
        )

    def _start_kubelet(self) -> None:
        cluster = self.cluster
        ca = cluster.ca
        pki = self.dir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        kubeconfig = cluster._component_kubeconfig("kubelet", f"system:node:{NODE_NAME}", ("system:nodes",))
        serving = ca.issue(
            "kubelet-serving", f"system:node:{NODE_NAME}", server_names=(netsetup.NODE_IP,), client=False
        )
        kubelet_dir = self.dir / "kubelet"
        kubelet_dir.mkdir(parents=True, exist_ok=True)
        (kubelet_dir / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        healthz = free_port()
        config = self.dir / "kubelet.yaml"
        config.write_text(
            yaml.safe_dump(
                kubelet_config(self.dir, ca.paths.cert, (serving.cert, serving.key), healthz, clusterdns.DNS_IP)
            )
        )
        proc = cluster.spawn(
            "kubelet",
            [
                str(cluster.binary("kubelet")),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={kubelet_dir / 'root'}",
                f"--cert-dir={pki}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={netsetup.NODE_IP}",
                "--v=0",
            ],
            (healthz,),
        )
        proc.wait_ready(lambda: cluster.kubectl("get", "node", NODE_NAME, check=False).returncode == 0, 60)
        cluster._wait_kubectl(
            ["wait", "--for=condition=Ready", f"node/{NODE_NAME}", "--timeout=5s"], "the real node Ready", 90
        )

    def _start_kube_proxy(self) -> None:
        cluster = self.cluster
        kubeconfig = cluster._component_kubeconfig("kube-proxy", "system:kube-proxy")
        healthz, metrics = free_port(), free_port()
        config = self.dir / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump(kube_proxy_config(kubeconfig, netsetup.POD_CIDR, healthz, metrics)))
        proc = cluster.spawn(
            "kube-proxy", [str(cluster.binary("kube-proxy")), f"--config={config}"], (healthz, metrics)
        )
        # /livez answers once the proxier runs; /healthz waits for a first sync, which needs a Service change.
        proc.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{healthz}/livez"), 60)

    def _start_kube_router(self) -> None:
        cluster = self.cluster
        kubeconfig = cluster._component_kubeconfig("kube-router", KUBE_ROUTER_USER)
        metrics = free_port()
        proc = cluster.spawn(
            "kube-router",
            [
                str(cluster.binary("kube-router")),
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-cni=false",
                "--health-port=0",
                f"--service-cluster-ip-range={self.service_cidr}",
                f"--metrics-port={metrics}",
                "--metrics-addr=127.0.0.1",
            ],
            (),
        )
        # Ready once its chain exists: from then on NetworkPolicies are enforced.
        proc.wait_ready(lambda: "KUBE-ROUTER-FORWARD" in _iptables_chains(), 60)

    def _taint_kwok_nodes(self) -> None:
        cluster = self.cluster
        taint = f"{KWOK_TAINT['key']}={KWOK_TAINT['value']}:{KWOK_TAINT['effect']}"
        cluster.kubectl("taint", "nodes", "-l", "type=kwok", taint, "--overwrite", check=False)

    # ---------------------------------------------------------------- stop
    def stop_workloads(self) -> None:
        """Stop the kubelet (it would restart containers), then kill every container."""
        for proc in list(self.cluster.processes):
            if proc.name == "kubelet":
                proc.stop()
                self.cluster.processes.remove(proc)
        kill_workloads(self.dir)

    def teardown(self) -> list[str]:
        return teardown_node(self.dir, self.cluster.binary("kube-proxy"))


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
        return bool(response.status == 200)


def _iptables_chains() -> str:
    return subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True, check=False).stdout


def teardown_node(node_dir: Path, kube_proxy: Path | None) -> list[str]:
    """Undo the node's side effects once its processes are gone; returns what remains (empty when clean)."""
    footprint_file = node_dir / "footprint.json"
    if not footprint_file.exists():
        return []
    kill_workloads(node_dir)
    if kube_proxy is not None and kube_proxy.exists():
        subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, check=False)
    footprint = netsetup.HostFootprint.from_json(json.loads(footprint_file.read_text()))
    problems = footprint.undo(node_dir)
    footprint_file.unlink()
    return problems
