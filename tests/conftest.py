"""Session fixtures: one real local cluster (or an existing one) per test run.

The cluster starts only when a test asks for it, so `pytest tests/unit` needs
no servers. To run the Kubernetes tests against an existing cluster instead,
set ``KUBECONFIG`` and ``MEDCLOUD_TEST_USE_EXISTING_CLUSTER=1``; MinIO, PostgreSQL and the
broker still start locally. Tests that need to mint identities (client
certificates from the cluster CA) are skipped there.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from medcloud_cli.localcluster import binaries
from medcloud_cli.localcluster.broker import BrokerInfo
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster, MinioInfo, run_kubectl
from medcloud_cli.localcluster.postgres import PostgresInfo


class ExistingCluster:
    """The Kubernetes part of the fixtures, backed by a cluster the user already runs."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.user_kubeconfig = kubeconfig
        self.audit_log: Path | None = None

    def kubectl(
        self, *args: str, check: bool = True, kubeconfig: Path | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        kubectl = binaries.locate("kubectl") or Path("kubectl")
        return run_kubectl(kubectl, kubeconfig or self.kubeconfig, *args, check=check, input=input)

    def kubeconfig_for_user(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        pytest.skip("minting client certificates needs the local cluster's CA")


def _use_existing() -> bool:
    return os.environ.get("MEDCLOUD_TEST_USE_EXISTING_CLUSTER") == "1" and bool(os.environ.get("KUBECONFIG"))


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """All local servers, started once per run and stopped at its end."""
    existing = _use_existing()
    cluster = LocalCluster(
        tmp_path_factory.mktemp("medcloud-cluster"),
        ClusterOptions(with_kubernetes=not existing, nodes=2),
        progress=lambda msg: print(f"[local cluster] {msg}", flush=True),
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def local_cluster(servers: LocalCluster) -> LocalCluster | ExistingCluster:
    """The Kubernetes cluster under test (admin kubeconfig, kubectl, identities)."""
    if _use_existing():
        return ExistingCluster(Path(os.environ["KUBECONFIG"]))
    return servers


@pytest.fixture(scope="session")
def k8s_api_client(local_cluster: LocalCluster | ExistingCluster) -> Iterator[client.ApiClient]:
    """A Kubernetes API client authenticated as cluster admin."""
    api = config.new_client_from_config(config_file=str(local_cluster.kubeconfig))
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def minio_server(servers: LocalCluster) -> MinioInfo:
    """The real MinIO server: endpoint ``127.0.0.1:PORT`` and root credentials."""
    assert servers.state is not None
    assert servers.state.minio is not None
    return servers.state.minio


@pytest.fixture(scope="session")
def mqtt_broker(servers: LocalCluster) -> BrokerInfo:
    """The real Mosquitto broker on TLS with client certificates required."""
    assert servers.state is not None
    assert servers.state.broker is not None
    return servers.state.broker


@pytest.fixture(scope="session")
def postgres_server(servers: LocalCluster) -> PostgresInfo:
    """The real PostgreSQL server (Debian's package) on loopback, superuser credentials and a database."""
    assert servers.state is not None
    assert servers.state.postgres is not None
    return servers.state.postgres


@pytest.fixture
def namespace(k8s_api_client: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(k8s_api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


def api_status(exc: Any) -> int:
    """HTTP status of a kubernetes ApiException."""
    return int(getattr(exc, "status", 0))
