"""Sharding against the real local cluster: two operator replicas split the Hospitals by label selector.

Each replica is its own process and identity (tests/operator_replicas.py), with
its own shard (``MEDCLOUD_SHARD_SELECTOR``) and its own peering, as two
Deployments of one chart would run. The API server's audit log says who wrote
what: every write about a Hospital of shard ``a`` is by replica ``a``, every
write about one of shard ``b`` by replica ``b``, and every Hospital is Ready.
"""

from __future__ import annotations

import contextlib
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
    audit_lines,
    hospital_spec,
    is_ready,
)
from tests.support import wait_for

pytestmark = pytest.mark.cluster

SHARD_LABEL = "medcloud.io/shard"
USERS = {"a": ACTIVE_USER, "b": STANDBY_USER}


def test_two_replicas_split_the_hospitals_by_label_and_each_serves_only_its_own(
    local_cluster: Any,
    peering_cluster: client.ApiClient,
    replica_kubeconfigs: dict[str, Path],
    tmp_path: Path,
) -> None:
    audit_log: Path = local_cluster.audit_log
    admin = ClusterAdmin(peering_cluster)
    suffix = uuid.uuid4().hex[:6]
    replicas: dict[str, Replica] = {}
    shards: dict[str, str] = {}  # hospital -> shard
    passed = False
    try:
        mark = audit_lines(audit_log)
        for shard, user in USERS.items():
            replicas[shard] = start_replica(
                replica_kubeconfigs[user],
                user,
                100,
                f"medcloud-shard-{shard}-{suffix}",
                tmp_path,
                suffix,
                env={"MEDCLOUD_SHARD_SELECTOR": f"{SHARD_LABEL}={shard}"},
            )
        for replica in replicas.values():
            wait_for(replica.healthy, f"{replica.user}'s liveness endpoint", timeout=90)

        for shard in ("a", "b", "a", "b"):
            name = f"shard-{shard}-{uuid.uuid4().hex[:6]}"
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Hospital",
                "metadata": {"name": name, "labels": {SHARD_LABEL: shard}},
                "spec": hospital_spec(name),
            }
            admin.custom.create_cluster_custom_object(GROUP, VERSION, "hospitals", body)
            shards[name] = shard
        for name in shards:
            wait_for(partial(_ready, admin, name), f"Hospital {name} Ready", timeout=120)

        def settled() -> bool:
            since = audit_lines(audit_log)
            time.sleep(2)
            return not operator_writes(audit_log, since, set(USERS.values()))

        wait_for(settled, "the replicas to settle")
        writes = operator_writes(audit_log, mark, set(USERS.values()))
        for name, shard in shards.items():
            writers = {w["user"]["username"] for w in writes if about_hospital(w, name)}
            assert writers == {USERS[shard]}, (name, writers)
        passed = True
    finally:
        try:
            _delete(admin, list(shards))
        finally:
            for replica in replicas.values():
                replica.stop()
                if not passed:
                    print(f"----- last lines of {replica.log} ({replica.user}) -----\n{log_tail(replica.log, 60)}")
            for shard in USERS:
                with contextlib.suppress(ApiException):
                    admin.custom.delete_cluster_custom_object(
                        PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL, f"medcloud-shard-{shard}-{suffix}"
                    )


def _ready(admin: ClusterAdmin, name: str) -> bool:
    return is_ready(admin.get("Hospital", name))


def _delete(admin: ClusterAdmin, names: list[str]) -> None:
    """Through the operators (their finalizers offboard each tenant): each replica deletes only its own."""
    for name in names:
        admin.delete("Hospital", name)
    gone: Callable[[str], bool] = partial(admin.gone, "Hospital")
    for name in names:
        wait_for(partial(gone, name), f"Hospital {name} to be deleted", timeout=120)
    with contextlib.suppress(ApiException):
        for name in names:
            client.CoreV1Api(admin.api).delete_namespaced_secret(f"kek-{name}", OPERATOR_NAMESPACE)
