"""The local cluster: real etcd, kube-apiserver, controllers, KWOK nodes, MinIO and Mosquitto.

Everything listens on 127.0.0.1 at free ports and keeps its data, certificates,
kubeconfigs and logs under one state directory. `LocalCluster.start()` returns
once every server is ready; `stop()` ends them all. The same class backs
`medcloud dev up` (servers detached, state recorded in ``state.json`` so a
later `dev down` finds them) and the pytest fixtures (servers die with the
test process).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medcloud_cli.localcluster import binaries, netsetup, platformservices
from medcloud_cli.localcluster.broker import BrokerInfo, start_broker
from medcloud_cli.localcluster.kubeconfig import build_kubeconfig, write_kubeconfig
from medcloud_cli.localcluster.node import RealNode, kill_workloads, teardown_node
from medcloud_cli.localcluster.pki import CertificateAuthority, KeyPair, service_account_signer
from medcloud_cli.localcluster.postgres import PostgresInfo, remove_data, start_postgres
from medcloud_cli.localcluster.process import (
    ServerProcess,
    StartupError,
    free_port,
    log_tail,
    pid_alive,
)

ADMIN_USER = "medcloud-admin"
# An authenticated identity that RBAC grants nothing beyond discovery.
UNPRIVILEGED_USER = "medcloud-nobody"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"

# Writes only, at Metadata level: enough to count and attribute every change
# (tests use it to prove an idle operator writes nothing), no request bodies
# (no secrets or medical data in the audit log).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}

Progress = Callable[[str], None]


@dataclass
class MinioInfo:
    endpoint: str
    access_key: str
    secret_key: str
    secure: bool = False

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])


@dataclass
class ClusterState:
    """What `dev status` and `dev down` need to find a running cluster again."""

    state_dir: str
    server: str
    kubeconfig: str
    user_kubeconfig: str
    audit_log: str
    pids: dict[str, int] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    minio: MinioInfo | None = None
    broker: BrokerInfo | None = None
    postgres: PostgresInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    commands: dict[str, dict[str, Any]] = field(default_factory=dict)
    """How each server was started (args, env, cwd, ports, log), so `dev up` can start a dead one again."""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))
        # Holds MinIO's root credentials.
        path.chmod(0o600)

    @classmethod
    def load(cls, path: Path) -> ClusterState:
        raw = json.loads(path.read_text())
        minio = MinioInfo(**raw.pop("minio")) if raw.get("minio") else None
        broker = BrokerInfo(**raw.pop("broker")) if raw.get("broker") else None
        postgres = PostgresInfo(**raw.pop("postgres")) if raw.get("postgres") else None
        for key in ("minio", "broker", "postgres"):
            raw.pop(key, None)
        return cls(**raw, minio=minio, broker=broker, postgres=postgres)


@dataclass
class ClusterOptions:
    nodes: int = 3
    # False when Kubernetes comes from elsewhere (an existing cluster): only
    # MinIO and the broker start here then.
    with_kubernetes: bool = True
    with_controllers: bool = True
    with_kwok: bool = True
    with_minio: bool = True
    with_broker: bool = True
    # PostgreSQL from Debian's package (medcloud.localcluster.postgres): the exchange's database.
    with_postgres: bool = True
    detach: bool = False
    start_timeout: float = 120.0
    # A real kubelet node (containerd, kube-proxy, kube-router) beside the KWOK
    # ones: Linux and root only (medcloud_cli.localcluster.node).
    real_node: bool = False
    # kube-router enforcing NetworkPolicies on the real node.
    network_policy: bool = True


def _http_ok(url: str, context: ssl.SSLContext | None = None, expect: str | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 - loopback URLs we built
        body = response.read().decode(errors="replace")
        return bool(response.status == 200 and (expect is None or expect in body))


def command_of(proc: ServerProcess) -> dict[str, Any]:
    """What it takes to start ``proc`` again exactly as it was started (same ports, same data)."""
    return {
        "args": list(proc.args),
        "env": dict(proc.env) if proc.env is not None else None,
        "cwd": str(proc.cwd) if proc.cwd is not None else None,
        "ports": list(proc.ports),
        "log": str(proc.log_path),
    }


class AlreadyRunningError(StartupError):
    """A cluster recorded in the state directory still runs: refused, and its record is left alone."""

    def __init__(self, state_dir: Path, state: ClusterState) -> None:
        self.state_dir, self.state = state_dir, state
        self.alive = sorted(name for name, pid in state.pids.items() if pid_alive(pid))
        self.dead = sorted(name for name, pid in state.pids.items() if not pid_alive(pid))
        missing = f"; not running: {', '.join(self.dead)}"
        super().__init__(
            f"a cluster already runs from {state_dir} ({', '.join(self.alive)})"
            + (missing if self.dead else "; stop it first with `medcloud dev down`")
        )


class LocalCluster:
    """A real Kubernetes control plane plus MinIO and Mosquitto on loopback."""

    STATE_FILE = "state.json"

    def __init__(self, state_dir: Path, options: ClusterOptions | None = None, progress: Progress | None = None):
        self.state_dir = state_dir
        self.options = options or ClusterOptions()
        self.progress: Progress = progress or (lambda _msg: None)
        self.pki_dir = state_dir / "pki"
        self.log_dir = state_dir / "logs"
        self.processes: list[ServerProcess] = []
        self.state: ClusterState | None = None
        self._ca: CertificateAuthority | None = None
        self._bins: dict[str, Path] = {}
        self.node: RealNode | None = None

    # ----------------------------------------------------------------- paths
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def user_kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig-unprivileged"

    @property
    def audit_log(self) -> Path:
        return self.log_dir / "audit.log"

    @property
    def server_host(self) -> str:
        """Where the platform servers (MinIO, the broker, PostgreSQL) listen besides loopback, if anywhere else.

        With a real node: the node address too, so that pods reach them through the platform
        Services (platformservices.py). It is a local-only /32, never the machine's own interface.
        """
        return netsetup.NODE_IP if self.node is not None else "127.0.0.1"

    @property
    def ca(self) -> CertificateAuthority:
        if self._ca is None:
            self._ca = CertificateAuthority(self.pki_dir, "ca", "medcloud-dev-ca")
        return self._ca

    def binary(self, name: str) -> Path:
        if name not in self._bins:
            self._bins.update(binaries.ensure_binaries([name], progress=self.progress))
        return self._bins[name]

    # ------------------------------------------------------------ identities
    def kubeconfig_for_user(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig authenticating as ``user`` (in ``groups``) by client certificate."""
        assert self.state is not None, "cluster not started"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
        pair = self.ca.issue(f"user-{safe}", user, groups)
        config = build_kubeconfig(self.state.server, self.ca.paths.cert, user, pair)
        return write_kubeconfig(self.state_dir / f"kubeconfig-{safe}", config)

    # ----------------------------------------------------------------- start
    def start(self) -> ClusterState:
        if (self.state_dir / self.STATE_FILE).exists():
            existing = ClusterState.load(self.state_dir / self.STATE_FILE)
            if any(pid_alive(p) for p in existing.pids.values()):
                raise AlreadyRunningError(self.state_dir, existing)
        opts = self.options
        needed = ["etcd", "kube-apiserver", "kubectl"] if opts.with_kubernetes else []
        if opts.with_kubernetes and opts.with_controllers:
            needed += ["kube-controller-manager", "kube-scheduler"]
        if opts.with_kubernetes and opts.with_kwok:
            needed.append("kwok")
        if self.options.with_minio:
            needed.append("minio")
        real_node = opts.with_kubernetes and opts.real_node
        if real_node:
            needed += [*binaries.NODE_BINARIES, "coredns", *(["kube-router"] if opts.network_policy else [])]
        self._bins.update(binaries.ensure_binaries(needed, progress=self.progress))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            if real_node:
                self.node = RealNode(self, SERVICE_CIDR, with_network_policy=opts.network_policy)
                self.node.prepare()
            if opts.with_kubernetes:
                self._start_control_plane()
                if opts.with_controllers:
                    self._start_controllers()
                if opts.with_kwok:
                    self._start_kwok()
                if self.node is not None:
                    self.node.start()
            else:
                self.state = ClusterState(
                    state_dir=str(self.state_dir), server="", kubeconfig="", user_kubeconfig="", audit_log=""
                )
            if opts.with_minio:
                self._start_minio()
            if opts.with_broker:
                self._require_state().broker = start_broker(self)
            if opts.with_postgres:
                self._require_state().postgres = start_postgres(self)
            if self.node is not None:
                for process in ("minio", "mosquitto", "postgres"):
                    if process in self._require_state().ports:
                        platformservices.publish(self, process)
        except BaseException:
            self.stop()
            raise
        self.save_state()
        return self._require_state()

    def _require_state(self) -> ClusterState:
        assert self.state is not None
        return self.state

    def save_state(self) -> None:
        state = self._require_state()
        state.pids = {p.name: p.pid for p in self.processes if p.pid is not None}
        state.commands = {p.name: command_of(p) for p in self.processes}
        state.save(self.state_dir / self.STATE_FILE)

    def spawn(
        self, name: str, args: list[str], ports: tuple[int, ...], env: dict[str, str] | None = None
    ) -> ServerProcess:
        proc = ServerProcess(
            name=name,
            args=args,
            log_path=self.log_dir / f"{name}.log",
            env=env,
            ports=ports,
            cwd=self.state_dir,
            die_with_parent=not self.options.detach,
        )
        self.progress(f"starting {name} ...")
        proc.start()
        self.processes.append(proc)
        return proc

    def _admin_tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.paths.cert))
        admin = KeyPair(self.pki_dir / "admin.crt", self.pki_dir / "admin.key")
        context.load_cert_chain(str(admin.cert), str(admin.key))
        return context

    def _start_control_plane(self) -> None:
        ca = self.ca
        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        # With a real node, pods must reach the API server: it binds to the node
        # address (a /32 on the project's own bridge) instead of loopback.
        host = netsetup.NODE_IP if self.node is not None else "127.0.0.1"
        server = f"https://{host}:{api_port}"
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server_names=(
                host,
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "10.96.0.1",
            ),
            client=False,
        )
        admin = ca.issue("admin", ADMIN_USER, ("system:masters",))
        unprivileged = ca.issue("unprivileged", UNPRIVILEGED_USER)
        sa = service_account_signer(self.pki_dir)
        write_kubeconfig(self.kubeconfig, build_kubeconfig(server, ca.paths.cert, ADMIN_USER, admin))
        write_kubeconfig(self.user_kubeconfig, build_kubeconfig(server, ca.paths.cert, UNPRIVILEGED_USER, unprivileged))
        self.state = ClusterState(
            state_dir=str(self.state_dir),
            server=server,
            kubeconfig=str(self.kubeconfig),
            user_kubeconfig=str(self.user_kubeconfig),
            audit_log=str(self.audit_log),
            ports={"etcd": etcd_port, "etcd-peer": etcd_peer, "kube-apiserver": api_port},
        )

        etcd = self.spawn(
            "etcd",
            [
                str(self.binary("etcd")),
                "--name=medcloud-dev",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=medcloud-dev=http://127.0.0.1:{etcd_peer}",
                "--listen-metrics-urls=",
                # A throwaway development store: durability is not worth the fsync latency.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            (etcd_port, etcd_peer),
        )
        etcd.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health", expect='"health":"true"'), 60)

        audit_policy = self.state_dir / "audit-policy.yaml"
        audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        node_flags = ["--authorization-mode=RBAC"]
        if self.node is not None:
            # As kubeadm: the Node authorizer and NodeRestriction bound the kubelet's
            # rights; the API server reaches the kubelet (logs, exec) with a client cert.
            kubelet_client = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client")
            node_flags = [
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        apiserver = self.spawn(
            "kube-apiserver",
            [
                str(self.binary("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={host}",
                f"--advertise-address={host}",
                f"--secure-port={api_port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.paths.cert}",
                *node_flags,
                "--anonymous-auth=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--service-account-issuer={server}",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--allow-privileged=false",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                "--profiling=false",
                "--v=0",
            ],
            (api_port,),
        )
        context = self._admin_tls()
        apiserver.wait_ready(lambda: _http_ok(f"{server}/readyz", context=context), self.options.start_timeout)

    def _component_kubeconfig(self, name: str, user: str, groups: tuple[str, ...] = ()) -> Path:
        state = self._require_state()
        pair = self.ca.issue(name, user, groups)
        return write_kubeconfig(
            self.state_dir / f"kubeconfig-{name}",
            build_kubeconfig(state.server, self.ca.paths.cert, user, pair),
        )

    def _start_controllers(self) -> None:
        state = self._require_state()
        kcm_port, sched_port = free_port(), free_port()
        state.ports.update({"kube-controller-manager": kcm_port, "kube-scheduler": sched_port})
        kcm_kubeconfig = self._component_kubeconfig("controller-manager", "system:kube-controller-manager")
        sched_kubeconfig = self._component_kubeconfig("scheduler", "system:kube-scheduler")
        unverified = ssl._create_unverified_context()  # noqa: S323 - self-signed health endpoints on loopback
        kcm = self.spawn(
            "kube-controller-manager",
            [
                str(self.binary("kube-controller-manager")),
                f"--kubeconfig={kcm_kubeconfig}",
                f"--authentication-kubeconfig={kcm_kubeconfig}",
                f"--authorization-kubeconfig={kcm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.state_dir / 'kcm-certs'}",
                # As kubeadm does: every controller acts with its own service
                # account, so the bootstrap RBAC roles apply unchanged.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.pki_dir / 'sa-signer.key'}",
                f"--root-ca-file={self.ca.paths.cert}",
                f"--cluster-signing-cert-file={self.ca.paths.cert}",
                f"--cluster-signing-key-file={self.ca.paths.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
                "--v=0",
            ],
            (kcm_port,),
        )
        kcm.wait_ready(lambda: _http_ok(f"https://127.0.0.1:{kcm_port}/healthz", context=unverified), 90)
        sched = self.spawn(
            "kube-scheduler",
            [
                str(self.binary("kube-scheduler")),
                f"--kubeconfig={sched_kubeconfig}",
                f"--authentication-kubeconfig={sched_kubeconfig}",
                f"--authorization-kubeconfig={sched_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={self.state_dir / 'scheduler-certs'}",
                "--leader-elect=false",
                "--v=0",
            ],
            (sched_port,),
        )
        sched.wait_ready(lambda: _http_ok(f"https://127.0.0.1:{sched_port}/healthz", context=unverified), 90)
        # The service-account controller creating "default" proves the controllers act.
        self._wait_kubectl(["get", "serviceaccount", "default", "-n", "default"], "default service account", 90)

    def _start_kwok(self) -> None:
        state = self._require_state()
        kwok_port = free_port()
        state.ports["kwok"] = kwok_port
        stages = binaries.ensure_kwok_stages(self.progress)
        kwok = self.spawn(
            "kwok",
            [
                str(self.binary("kwok")),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={stages}",
                "--node-lease-duration-seconds=40",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.0.0.1",
                f"--server-address=127.0.0.1:{kwok_port}",
            ],
            (kwok_port,),
        )
        kwok.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{kwok_port}/healthz"), 60)
        for index in range(self.options.nodes):
            self._kubectl_apply(fake_node(f"kwok-node-{index}"))
        self._wait_kubectl(["wait", "--for=condition=Ready", "node", "--all", "--timeout=5s"], "KWOK nodes Ready", 90)

    def _start_minio(self) -> None:
        state = self._require_state()
        port = free_port()
        state.ports["minio"] = port
        # MinIO listens on one address: the node's when there is a node (the machine reaches it there too).
        host = self.server_host
        state.minio = MinioInfo(
            endpoint=f"{host}:{port}",
            access_key="medcloud-root",
            secret_key=secrets.token_urlsafe(24),
        )
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.state_dir),
            "MINIO_ROOT_USER": state.minio.access_key,
            "MINIO_ROOT_PASSWORD": state.minio.secret_key,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        }
        minio = self.spawn(
            "minio",
            [
                str(self.binary("minio")),
                "server",
                str(self.state_dir / "minio-data"),
                "--address",
                f"{host}:{port}",
                "--quiet",
                "--anonymous",
            ],
            (port,),
            env=env,
        )
        minio.wait_ready(lambda: _http_ok(f"http://{host}:{port}/minio/health/ready"), 90)

    # ------------------------------------------------------------- kubectl
    def kubectl(self, *args: str, check: bool = True, kubeconfig: Path | None = None, input: str | None = None) -> Any:
        return run_kubectl(self.binary("kubectl"), kubeconfig or self.kubeconfig, *args, check=check, input=input)

    def _kubectl_apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def _wait_kubectl(self, args: list[str], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = self.kubectl(*args, check=False)
            if proc.returncode == 0:
                return
            last = proc.stderr.strip()
            time.sleep(0.5)
        logs = "\n".join(f"--- {p.name}\n{log_tail(p.log_path, 15)}" for p in self.processes)
        raise StartupError(f"timed out waiting for {what}: {last}\n{logs}")

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        if self.node is not None:
            self.node.stop_workloads()
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        if self.node is not None:
            for problem in self.node.teardown():
                self.progress(f"teardown: {problem}")
        if self.state is not None:
            remove_data(self.state.postgres)
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / self.STATE_FILE).unlink()

    def held_ports(self) -> list[int]:
        return [port for proc in self.processes for port in proc.ports]

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def fake_node(name: str) -> dict[str, Any]:
    """A Node that KWOK manages: no kubelet, but pods on it become Running."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "node-role.kubernetes.io/agent": "",
            },
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        },
    }


def stop_from_state(state_dir: Path, grace: float = 10.0) -> list[str]:
    """Stop a detached cluster recorded in ``state_dir``; returns the names stopped."""
    path = state_dir / LocalCluster.STATE_FILE
    node_dir = state_dir / "node"
    if not path.exists():
        # A start that died before recording its servers may still have changed the machine.
        teardown_node(node_dir, binaries.locate("kube-proxy"))
        return []
    state = ClusterState.load(path)
    stopped = []
    order = [
        "kubelet",
        "postgres",
        "mosquitto",
        "minio",
        "kube-router",
        "coredns",
        "kube-proxy",
        "containerd",
        "kwok",
        "kube-scheduler",
        "kube-controller-manager",
        "kube-apiserver",
        "etcd",
    ]
    names = sorted(state.pids, key=lambda n: order.index(n) if n in order else -1)
    for name in names:
        proc = ServerProcess(name=name, args=[], log_path=state_dir / "logs" / f"{name}.log", pid=state.pids[name])
        if proc.running():
            proc.stop(grace)
            stopped.append(name)
        if name == "kubelet":
            # Before containerd stops: its containers and shims go with the kubelet.
            kill_workloads(node_dir)
    teardown_node(node_dir, binaries.locate("kube-proxy"))
    remove_data(state.postgres)
    path.unlink()
    return stopped


def run_kubectl(
    kubectl: Path, kubeconfig: Path, *args: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``kubectl --kubeconfig=... ARGS``; with ``check``, a failure raises with kubectl's own words."""
    proc = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        input=input,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


KEPT_STATE = (
    ("etcd", "the cluster's data (every Hospital, RecordStore, ... comes back with the next `dev up`)"),
    ("minio-data", "MinIO's buckets (the encrypted records)"),
    ("pki", "certificates and keys"),
    ("logs", "the servers' logs"),
    ("node", "the real node's containerd store (imported images) and kubelet state; nothing outside it"),
)
"""What `medcloud dev down` leaves in the state directory, and why a person would care."""


class NotAStateDirError(RuntimeError):
    """The directory does not look like a local cluster's state: it is never deleted."""


def purge_state(state_dir: Path) -> bool:
    """Delete the state directory of a stopped local cluster; False when there was none.

    Only a directory the local cluster made is deleted (it holds the state
    file, its PKI or its etcd data): a mistyped ``--state-dir`` never costs
    anyone their files.
    """
    if not state_dir.exists():
        return False
    marks = (LocalCluster.STATE_FILE, "pki", "etcd")
    if not state_dir.is_dir() or not any((state_dir / mark).exists() for mark in marks):
        raise NotAStateDirError(f"{state_dir} holds no local cluster state ({', '.join(marks)}); not deleting it")
    shutil.rmtree(state_dir)
    return True


def iter_status(state_dir: Path) -> Iterator[tuple[str, int, bool]]:
    """(name, pid, alive) for each server recorded in ``state_dir``."""
    path = state_dir / LocalCluster.STATE_FILE
    if not path.exists():
        return
    state = ClusterState.load(path)
    for name, pid in state.pids.items():
        yield name, pid, pid_alive(pid)
