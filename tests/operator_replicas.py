"""Operator replicas as their own processes, each as its own identity: for the peering and sharding tests.

Each replica runs ``python -m medcloud_operator --peering <name>`` (as a
Deployment's pod would), authenticated by a client certificate of its own user,
both users in one group bound to the operator's RBAC from deploy/. The API
server's audit log then says which replica wrote what.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medcloud_cli.localcluster.process import ServerProcess, free_port, log_tail
from tests.operator_support import OPERATOR_NAMESPACE, REPO, Json, audit_writes, healthz

PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL = "kopf.dev", "v1", "clusterkopfpeerings"
# Names from deploy/operator-rbac.yaml.
OPERATOR_CLUSTER_ROLE = "medcloud-operator"
OPERATOR_KEYS_ROLE = "medcloud-operator-keys"
ACTIVE_USER, STANDBY_USER = "medcloud-operator-a", "medcloud-operator-b"
# Both replicas are one operator: a group holds them, and that group is the
# subject each tenant's RoleBinding medcloud-operator-tenant binds.
OPERATOR_GROUP = "medcloud-operator-peering-test"
REPLICA_STORAGE_CIDR = "10.250.0.0/24"


def operator_writes(audit_log: Path, since_line: int, users: set[str]) -> list[Json]:
    """Write requests (the audit policy logs only those) by ``users``, except to Kopf's peering objects.

    Peering heartbeats are how replicas see each other, so every replica
    writes them; everything else is acting on the cluster.
    """
    entries = audit_writes(audit_log, since_line, users)
    return [e for e in entries if (e.get("objectRef") or {}).get("apiGroup") != PEERING_GROUP]


def about_hospital(entry: Json, hospital: str) -> bool:
    """Whether an audited write concerns ``hospital``'s tenancy."""
    ref = entry.get("objectRef") or {}
    ns = f"hospital-{hospital}"
    return (
        ref.get("namespace") == ns
        or (ref.get("resource") == "namespaces" and ref.get("name") == ns)
        or (ref.get("resource") == "hospitals" and ref.get("name") == hospital)
        or (ref.get("resource") == "secrets" and ref.get("name") == f"kek-{hospital}")
    )


@dataclass
class Replica:
    """One operator process: its identity (API user and Kopf peer id), priority and log."""

    user: str
    peer_id: str
    priority: int
    probe_port: int
    process: ServerProcess

    @property
    def log(self) -> Path:
        return self.process.log_path

    def healthy(self) -> bool:
        if not self.process.running():
            raise AssertionError(f"operator {self.user} exited:\n{log_tail(self.log)}")
        return healthz(self.probe_port)

    def stop(self) -> int | None:
        """SIGTERM (as Kubernetes stops a pod), SIGKILL after a grace period; the exit code."""
        self.process.stop(grace=30)
        if self.process.popen is None:
            return None
        # stop() may see the process as a zombie before reaping it: reap it for its exit code.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.popen.wait(timeout=10)
        return self.process.popen.returncode


def start_replica(
    kubeconfig: Path,
    user: str,
    priority: int,
    peering: str,
    log_dir: Path,
    suffix: str,
    env: Mapping[str, str] | None = None,
) -> Replica:
    """An operator process (``python -m medcloud_operator --peering PEERING``) as ``user``; ``env`` adds settings."""
    metrics_port, probe_port = free_port(), free_port()
    peer_id = f"{user}-{suffix}"
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        # Kopf's peer identity; in a pod it is the pod's name.
        "POD_ID": peer_id,
        "MEDCLOUD_PEERING_PRIORITY": str(priority),
        "MEDCLOUD_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
        "MEDCLOUD_METRICS_PORT": str(metrics_port),
        "MEDCLOUD_METRICS_ADDRESS": "127.0.0.1",
        "MEDCLOUD_PROBE_PORT": str(probe_port),
        "MEDCLOUD_STORAGE_CIDRS": json.dumps([REPLICA_STORAGE_CIDR]),
        "MEDCLOUD_DELETION_RETRY_SECONDS": "1",
        "MEDCLOUD_OPERATOR_SUBJECT_KIND": "Group",
        "MEDCLOUD_OPERATOR_SUBJECT_NAME": OPERATOR_GROUP,
        **(env or {}),
    }
    process = ServerProcess(
        name=f"operator {user}",
        args=[
            sys.executable,
            "-m",
            "medcloud_operator",
            "--peering",
            peering,
            "--liveness",
            f"http://127.0.0.1:{probe_port}/healthz",
            "--log-format",
            "plain",
            "--verbose",
        ],
        log_path=log_dir / f"{user}.log",
        env=env,
        ports=(metrics_port, probe_port),
        cwd=REPO,
        die_with_parent=True,
    )
    process.start()
    return Replica(user, peer_id, priority, probe_port, process)
