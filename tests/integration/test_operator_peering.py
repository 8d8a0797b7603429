"""Kopf peering against the real local cluster: of two operator replicas, only one ever acts.

Two operator processes run side by side (``python -m medcloud_operator --peering
<name>``, as a Deployment with two replicas would), each as its own identity
bound to the operator's RBAC from deploy/operator-rbac.yaml, with distinct
explicit priorities. The API server's audit log says who wrote what: the
tenancy of a Hospital must be written by the higher-priority replica alone.
When that replica stops, the standby must take over and serve the next one.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from medcloud_cli.localcluster.process import log_tail
from tests.operator_replicas import (
    ACTIVE_USER,
    OPERATOR_GROUP,
    PEERING_GROUP,
    PEERING_PLURAL,
    PEERING_VERSION,
    STANDBY_USER,
    Replica,
    about_hospital,
    operator_writes,
    start_replica,
)
from tests.operator_support import (
    GROUP,
    OPERATOR_NAMESPACE,
    VERSION,
    ClusterAdmin,
    Json,
    audit_lines,
    hospital_spec,
    is_ready,
    raw,
)
from tests.support import wait_for

pytestmark = pytest.mark.cluster

ACTIVE_PRIORITY, STANDBY_PRIORITY = 200, 100
# What the tenancy of one Hospital is written as: (resource, subresource).
TENANCY_WRITES = {
    ("namespaces", ""),
    ("resourcequotas", ""),
    ("networkpolicies", ""),
    ("roles", ""),
    ("rolebindings", ""),  # medcloud-operator-tenant: the operator's Secrets in the tenant namespace
    ("hospitals", "status"),
}


# --------------------------------------------------------------------------- helpers


def _kinds(entries: list[Json]) -> set[tuple[str, str]]:
    return {(e["objectRef"].get("resource", ""), e["objectRef"].get("subresource", "")) for e in entries}


def _summary(entries: list[Json]) -> list[tuple[str, str, str]]:
    return [(e["user"]["username"], e["verb"], json.dumps(e.get("objectRef"), sort_keys=True)) for e in entries]


# --------------------------------------------------------------------------- test


def test_only_the_highest_priority_replica_acts_and_the_standby_takes_over(
    local_cluster: Any,
    peering_cluster: client.ApiClient,
    replica_kubeconfigs: dict[str, Path],
    tmp_path: Path,
) -> None:
    audit_log: Path = local_cluster.audit_log
    admin = ClusterAdmin(peering_cluster)
    custom = admin.custom
    suffix = uuid.uuid4().hex[:6]
    peering = f"medcloud-peering-test-{suffix}"
    replicas: list[Replica] = []
    hospitals: list[str] = []
    passed = False

    def peers() -> dict[str, Json]:
        body = raw(custom.get_cluster_custom_object, PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL, peering)
        return dict((body or {}).get("status") or {})

    def hospital(name: str) -> Json | None:
        return admin.get("Hospital", name)

    def create_hospital(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        admin.create("Hospital", name, hospital_spec(name))
        hospitals.append(name)
        return name

    def wait_ready(name: str) -> None:
        wait_for(lambda: is_ready(hospital(name)), f"Hospital {name} to be Ready", timeout=90)

    def settled(users: set[str]) -> bool:
        """No write by ``users`` for a couple of seconds (the last reconciles and status mirrors are done)."""
        mark = audit_lines(audit_log)
        time.sleep(2)
        return not operator_writes(audit_log, mark, users)

    operators = {ACTIVE_USER, STANDBY_USER}
    try:
        # The active replica first, so the standby finds it already in the peering.
        # (The order is not what keeps the standby quiet: with mandatory peering,
        # Kopf keeps a replica paused until it has seen the peering's state.)
        mark = audit_lines(audit_log)
        active = start_replica(
            replica_kubeconfigs[ACTIVE_USER], ACTIVE_USER, ACTIVE_PRIORITY, peering, tmp_path, suffix
        )
        replicas.append(active)
        wait_for(active.healthy, "the active replica's liveness endpoint", timeout=90)
        wait_for(lambda: active.peer_id in peers(), f"{active.peer_id} in ClusterKopfPeering {peering}")
        standby = start_replica(
            replica_kubeconfigs[STANDBY_USER], STANDBY_USER, STANDBY_PRIORITY, peering, tmp_path, suffix
        )
        replicas.append(standby)
        wait_for(standby.healthy, "the standby replica's liveness endpoint", timeout=90)
        wait_for(lambda: standby.peer_id in peers(), f"{standby.peer_id} in ClusterKopfPeering {peering}")
        assert {p: peers()[p]["priority"] for p in (active.peer_id, standby.peer_id)} == {
            active.peer_id: ACTIVE_PRIORITY,
            standby.peer_id: STANDBY_PRIORITY,
        }

        # One Hospital: the active replica builds its tenancy; the standby writes nothing at all.
        first = create_hospital("peer-a")
        wait_ready(first)
        wait_for(lambda: (hospital(first) or {}).get("status", {}).get("quotaUsage"), "quota usage in status")
        wait_for(lambda: settled(operators), "the operators to settle")
        writes = operator_writes(audit_log, mark, operators)
        by_active = [w for w in writes if w["user"]["username"] == ACTIVE_USER]
        by_standby = [w for w in writes if w["user"]["username"] == STANDBY_USER]
        assert by_standby == [], _summary(by_standby)
        assert _kinds([w for w in by_active if about_hospital(w, first)]) >= TENANCY_WRITES, _summary(by_active)
        rbac = client.RbacAuthorizationV1Api(peering_cluster)
        own = rbac.read_namespaced_role_binding("medcloud-operator-tenant", f"hospital-{first}")
        assert [(s.kind, s.name) for s in own.subjects] == [("Group", OPERATOR_GROUP)]

        # The active replica stops the way Kubernetes stops a pod. On a clean
        # exit Kopf removes itself from the peering, so the standby need not
        # wait for its lease to lapse.
        exit_code = active.stop()
        assert exit_code == 0, f"exit code {exit_code}:\n{log_tail(active.log)}"
        wait_for(lambda: active.peer_id not in peers(), f"{active.peer_id} to leave ClusterKopfPeering {peering}")
        assert standby.peer_id in peers()

        # The next Hospital is served by the standby, now the only live replica.
        mark = audit_lines(audit_log)
        second = create_hospital("peer-b")
        wait_ready(second)
        wait_for(lambda: settled(operators), "the remaining operator to settle")
        writes = operator_writes(audit_log, mark, operators)
        about_second = [w for w in writes if about_hospital(w, second)]
        assert {w["user"]["username"] for w in writes} <= {STANDBY_USER}, _summary(writes)
        assert _kinds(about_second) >= TENANCY_WRITES, _summary(about_second)
        assert standby.process.running(), log_tail(standby.log)
        passed = True
    finally:
        try:
            _delete_hospitals(custom, hospitals, hospital)
        finally:
            for replica in reversed(replicas):
                replica.stop()
            with contextlib.suppress(ApiException):
                custom.delete_cluster_custom_object(PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL, peering)
            if not passed:
                for replica in replicas:
                    print(f"----- last lines of {replica.log} ({replica.user}) -----\n{log_tail(replica.log, 80)}")
        if passed:
            assert not [r.user for r in replicas if r.process.running()], "operator processes left running"


def _gone(get: Callable[[str], Json | None], name: str) -> bool:
    return get(name) is None


def _delete_hospitals(custom: client.CustomObjectsApi, names: list[str], get: Callable[[str], Json | None]) -> None:
    """Delete through the operator (its finalizer offboards the tenant); strip finalizers only if none acts."""
    for name in names:
        with contextlib.suppress(ApiException):
            custom.delete_cluster_custom_object(GROUP, VERSION, "hospitals", name)
    try:
        for name in names:
            wait_for(partial(_gone, get, name), f"Hospital {name} to be deleted", timeout=120)
    finally:
        # Last resort, when no operator was left to finish the offboarding: let the
        # objects go and remove what they held, so later tests start clean.
        core = client.CoreV1Api(custom.api_client)
        for name in names:
            if get(name) is None:
                continue
            with contextlib.suppress(ApiException):
                custom.patch_cluster_custom_object(
                    GROUP,
                    VERSION,
                    "hospitals",
                    name,
                    {"metadata": {"finalizers": None}},
                    _content_type="application/merge-patch+json",
                )
            with contextlib.suppress(ApiException):
                core.delete_namespace(f"hospital-{name}")
            with contextlib.suppress(ApiException):
                core.delete_namespaced_secret(f"kek-{name}", OPERATOR_NAMESPACE)
