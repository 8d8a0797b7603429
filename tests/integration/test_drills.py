"""Drills against the real local cluster: faults a province will meet, each ending with nothing lost or orphaned.

- The operator SIGKILLed in the middle of onboarding 100 Hospitals: after a
  restart every one is Ready, each tenancy holds exactly the objects its
  builders name (no duplicate, no orphan), and every KEK that existed at the
  kill is unchanged, one version, none made twice.
- The API server restarted under a running operator: the operator recovers its
  watches on its own (no restart of its own) and onboards the next Hospital.

A real Prometheus (Debian's package) scrapes the operator with the chart's
rules; the drill's alert must fire while the fault lasts and clear afterwards,
read through Prometheus's HTTP API. The rules are the chart's, with one change
stated here: every ``for`` is cut to a few seconds (``DRILL_FOR``), since the
chart's own five minutes would make a drill last five minutes; the expressions
are untouched.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from medcloud.models import HospitalSpec
from medcloud.tenancy import kek, labels
from medcloud_cli.localcluster import prometheus
from medcloud_cli.localcluster.cluster import LocalCluster
from medcloud_cli.localcluster.process import ServerProcess, free_port, log_tail
from medcloud_operator.builders.hospital import build_tenancy
from medcloud_operator.settings import OperatorSettings
from tests.operator_replicas import (
    ACTIVE_USER,
    PEERING_GROUP,
    PEERING_PLURAL,
    PEERING_VERSION,
    REPLICA_STORAGE_CIDR,
    Replica,
    start_replica,
)
from tests.operator_support import (
    OPERATOR_NAMESPACE,
    ClusterAdmin,
    Json,
    hospital_spec,
    is_ready,
    raw,
)
from tests.support import wait_for

pytestmark = pytest.mark.cluster

HOSPITALS = 100
DRILL_FOR = "4s"
NAMESPACED_TENANCY = (
    ("ResourceQuota", "list_namespaced_resource_quota", "core"),
    ("LimitRange", "list_namespaced_limit_range", "core"),
    ("NetworkPolicy", "list_namespaced_network_policy", "net"),
    ("Role", "list_namespaced_role", "rbac"),
    ("RoleBinding", "list_namespaced_role_binding", "rbac"),
)


def drill_rules() -> dict[str, Any]:
    """The chart's rules with every ``for`` cut to ``DRILL_FOR``."""
    rules = copy.deepcopy(prometheus.chart_rules())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = DRILL_FOR
    return rules


@pytest.fixture(scope="module")
def metrics_port() -> int:
    """The operator's metrics port: the same across its restarts, so Prometheus scrapes one target."""
    return free_port()


@pytest.fixture(scope="module")
def prometheus_url(local_cluster: Any, metrics_port: int) -> Iterator[str]:
    if not isinstance(local_cluster, LocalCluster):
        pytest.skip("the drills stop and start the local cluster's own servers")
    proc, url = prometheus.start_prometheus(
        local_cluster, {prometheus.OPERATOR_JOB: f"127.0.0.1:{metrics_port}"}, rules=drill_rules(), keep_history=False
    )
    yield url
    proc.stop()
    # The session cluster's record must not name a server that is gone (`dev up` would start it again).
    local_cluster.processes.remove(proc)
    local_cluster.save_state()


def alert_state(url: str, alert: str) -> str | None:
    return prometheus.firing(url).get(alert)


def start_operator(kubeconfig: Path, tmp_path: Path, metrics_port: int, peering: str, suffix: str) -> Replica:
    return start_replica(
        kubeconfig,
        ACTIVE_USER,
        100,
        peering,
        tmp_path,
        suffix,
        env={"MEDCLOUD_METRICS_PORT": str(metrics_port), "MEDCLOUD_MAX_CONCURRENT_RECONCILES": "4"},
    )


def tenancy_names(admin: ClusterAdmin, hospital: str) -> set[tuple[str, str]]:
    """(kind, name) of every object labelled as ``hospital``'s tenancy in its namespace."""
    apis = {"core": admin.core, "net": admin.net, "rbac": admin.rbac}
    found = set()
    for kind, method, api in NAMESPACED_TENANCY:
        listed = raw(
            getattr(apis[api], method), f"hospital-{hospital}", label_selector=labels.tenancy_selector(hospital)
        )
        found |= {(kind, item["metadata"]["name"]) for item in (listed or {}).get("items", [])}
    return found


def kek_secrets(admin: ClusterAdmin, prefix: str) -> dict[str, Json]:
    listed = raw(admin.core.list_namespaced_secret, OPERATOR_NAMESPACE)
    return {
        s["metadata"]["name"]: s for s in (listed or {}).get("items", []) if s["metadata"]["name"].startswith(prefix)
    }


def offboard(admin: ClusterAdmin, names: list[str], operator: Replica, peering: str, *, show_log: bool) -> None:
    """Delete the drill's Hospitals through the operator (its finalizer offboards them), then stop it."""
    try:
        for name in names:
            admin.delete("Hospital", name)
        for name in names:
            wait_for(partial(admin.gone, "Hospital", name), f"Hospital {name} to be deleted", timeout=300)
    finally:
        operator.stop()
        if show_log:
            print(f"----- last lines of {operator.log} -----\n{log_tail(operator.log, 80)}")
        with contextlib.suppress(ApiException):
            admin.custom.delete_cluster_custom_object(PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL, peering)


def ready_count(admin: ClusterAdmin, names: list[str]) -> int:
    return sum(1 for name in names if is_ready(admin.get("Hospital", name)))


def test_the_operator_killed_mid_onboarding_of_100_hospitals_loses_and_orphans_nothing(
    local_cluster: Any,
    peering_cluster: client.ApiClient,
    replica_kubeconfigs: dict[str, Path],
    prometheus_url: str,
    metrics_port: int,
    tmp_path: Path,
) -> None:
    admin = ClusterAdmin(peering_cluster)
    suffix = uuid.uuid4().hex[:6]
    peering = f"medcloud-drill-{suffix}"
    prefix = f"drill-{suffix}-"
    names = [f"{prefix}{i:03d}" for i in range(HOSPITALS)]
    kubeconfig = replica_kubeconfigs[ACTIVE_USER]
    operator = start_operator(kubeconfig, tmp_path, metrics_port, peering, suffix)
    passed = False
    try:
        wait_for(operator.healthy, "the operator's liveness endpoint", timeout=90)
        wait_for(lambda: prometheus.target_health(prometheus_url).get(prometheus.OPERATOR_JOB) == "up", "a scrape")
        # (Prometheus started before any operator: the alert may fire until the first scrape counts.)
        wait_for(lambda: alert_state(prometheus_url, "MedcloudOperatorDown") is None, "no alert", timeout=60)

        def create(name: str) -> None:
            admin.create("Hospital", name, hospital_spec(name))

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(create, names))
        # Mid-onboarding: some tenants are Ready, most are not yet.
        wait_for(lambda: ready_count(admin, names) >= 10, "the first Hospitals to be Ready", timeout=120)
        assert operator.process.popen is not None
        operator.process.popen.send_signal(signal.SIGKILL)
        operator.process.popen.wait(timeout=30)
        at_kill = {name: secret["data"] for name, secret in kek_secrets(admin, f"kek-{prefix}").items()}
        ready_at_kill = ready_count(admin, names)
        assert ready_at_kill < HOSPITALS, "the kill came after onboarding had finished: not a drill"

        # The alert fires while no operator answers ...
        wait_for(
            lambda: alert_state(prometheus_url, "MedcloudOperatorDown") == "firing",
            "MedcloudOperatorDown to fire",
            timeout=60,
        )
        operator = start_operator(kubeconfig, tmp_path, metrics_port, peering, suffix + "-2")
        wait_for(operator.healthy, "the restarted operator's liveness endpoint", timeout=90)
        wait_for(lambda: ready_count(admin, names) == HOSPITALS, "every Hospital to be Ready", timeout=600)
        # ... and clears once it is back.
        wait_for(
            lambda: alert_state(prometheus_url, "MedcloudOperatorDown") is None,
            "MedcloudOperatorDown to clear",
            timeout=60,
        )

        # As start_replica configures the operator (the storage endpoint adds a network policy).
        settings = OperatorSettings(operator_namespace=OPERATOR_NAMESPACE, storage_cidrs=[REPLICA_STORAGE_CIDR])
        secrets = kek_secrets(admin, f"kek-{prefix}")
        assert set(secrets) == {kek.secret_name(name) for name in names}, "a KEK is missing or stray"
        for name, data in at_kill.items():
            assert secrets[name]["data"] == data, f"{name} changed after the kill: a KEK lost or made twice"
        namespaces = raw(admin.core.list_namespace, label_selector=labels.HOSPITAL)
        ours = {
            ns["metadata"]["name"]
            for ns in (namespaces or {}).get("items", [])
            if ns["metadata"]["name"].startswith(f"hospital-{prefix}")
        }
        assert ours == {f"hospital-{name}" for name in names}
        for name in names:
            body = admin.get("Hospital", name)
            assert body is not None
            assert body["status"]["kek"]["version"] == 1
            assert kek.versions(secrets[kek.secret_name(name)]) == (1,), f"{name}: more than one KEK version"
            spec = HospitalSpec.model_validate(body["spec"])
            desired = {(o["kind"], o["metadata"]["name"]) for o in build_tenancy(name, spec, settings)}
            namespaced = {(kind, obj_name) for kind, obj_name in desired if kind != "Namespace"}
            assert tenancy_names(admin, name) == namespaced, f"{name}: a duplicate or orphan child"
        print(f"drill: SIGKILL with {ready_at_kill}/{HOSPITALS} Ready and {len(at_kill)} KEKs; all Ready after restart")
        passed = True
    finally:
        offboard(admin, names, operator, peering, show_log=not passed)


def apiserver(cluster: LocalCluster) -> ServerProcess:
    found = [p for p in cluster.processes if p.name == "kube-apiserver"]
    assert len(found) == 1, [p.name for p in cluster.processes]
    return found[0]


def _created(admin: ClusterAdmin, name: str) -> bool:
    """Create the Hospital; False while the API server is still starting (it answers 503 until its paths are in)."""
    try:
        admin.create("Hospital", name, hospital_spec(name))
    except ApiException as exc:
        if exc.status == 503:
            return False
        if exc.status != 409:  # 409: an earlier try went through, only its answer was lost
            raise
    return True


def test_the_api_server_restarted_under_a_running_operator_which_recovers_on_its_own(
    local_cluster: Any,
    peering_cluster: client.ApiClient,
    replica_kubeconfigs: dict[str, Path],
    prometheus_url: str,
    metrics_port: int,
    tmp_path: Path,
) -> None:
    admin = ClusterAdmin(peering_cluster)
    suffix = uuid.uuid4().hex[:6]
    peering = f"medcloud-drill-{suffix}"
    operator = start_operator(replica_kubeconfigs[ACTIVE_USER], tmp_path, metrics_port, peering, suffix)
    names: list[str] = []
    passed = False
    try:
        wait_for(operator.healthy, "the operator's liveness endpoint", timeout=90)
        before = f"apirestart-{suffix}-a"
        admin.create("Hospital", before, hospital_spec(before))
        names.append(before)
        wait_for(lambda: is_ready(admin.get("Hospital", before)), f"Hospital {before} Ready", timeout=120)
        pid_before = operator.process.popen.pid if operator.process.popen else None

        server = apiserver(local_cluster)
        server.stop(grace=10)
        server.start()
        # The cluster's record (state.json) names the new process, as `dev up` would after its own restart.
        local_cluster.save_state()
        after = f"apirestart-{suffix}-b"
        wait_for(partial(_created, admin, after), "the API server to take a Hospital again", timeout=120)
        names.append(after)
        wait_for(
            lambda: is_ready(admin.get("Hospital", after)), f"Hospital {after} Ready after the restart", timeout=300
        )
        assert operator.process.running(), log_tail(operator.log)
        assert (operator.process.popen.pid if operator.process.popen else None) == pid_before, "the operator restarted"
        wait_for(
            lambda: prometheus.target_health(prometheus_url).get(prometheus.OPERATOR_JOB) == "up",
            "the operator scraped",
        )
        assert alert_state(prometheus_url, "MedcloudOperatorDown") is None
        passed = True
    finally:
        offboard(admin, names, operator, peering, show_log=not passed)
