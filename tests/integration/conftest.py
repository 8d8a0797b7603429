"""Fixtures for the modules that run the operator: its CRDs, its RBAC, its own identity, and the operator itself.

The operator runs in-process (Kopf's KopfRunner, see tests/operator_support.py)
as its own identity: a client certificate for the operator's service account
user, bound to nothing but the RBAC in deploy/, so the tests that use it also
prove that RBAC is enough. ``operator`` here is the whole operator with every
handler and the session's MinIO; a module that needs another configuration
defines its own ``operator``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from minio import Minio

from medcloud.kube.crds import install_crds
from medcloud_cli.localcluster.broker import BrokerInfo
from medcloud_cli.localcluster.cluster import MinioInfo
from medcloud_cli.localcluster.postgres import PostgresInfo
from tests.exchange_harness import (
    ExampleAlliance,
    admitted_callers,
    consortium_members,
    granted_exchange,
    new_database,
    running_exchange,
)
from tests.exchange_harness import (
    key_service as running_key_service,
)
from tests.exchange_support import Caller
from tests.operator_replicas import (
    ACTIVE_USER,
    OPERATOR_CLUSTER_ROLE,
    OPERATOR_GROUP,
    OPERATOR_KEYS_ROLE,
    STANDBY_USER,
)
from tests.operator_support import (
    OPERATOR_NAMESPACE,
    OPERATOR_USER,
    REPO,
    SA_GROUPS,
    ClusterAdmin,
    RunningOperator,
    raw,
    run_operator,
    storage_env,
)

Json = dict[str, Any]


@pytest.fixture(scope="module")
def crds(k8s_api_client: client.ApiClient) -> None:
    """MedCloud's CRDs, installed for the module."""
    install_crds(k8s_api_client)


@pytest.fixture(scope="module")
def operator_rbac(local_cluster: Any, k8s_api_client: client.ApiClient, crds: None) -> None:
    """The operator's namespace and the RBAC of deploy/operator-rbac.yaml (tenancy)."""
    core = client.CoreV1Api(k8s_api_client)
    if raw(core.read_namespace, OPERATOR_NAMESPACE) is None:
        core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    local_cluster.kubectl("apply", "-f", str(REPO / "deploy" / "operator-rbac.yaml"))


@pytest.fixture(scope="module")
def operator_kubeconfig(local_cluster: Any, operator_rbac: None) -> Path:
    """The operator's own identity, with exactly the RBAC of deploy/operator-rbac.yaml."""
    path: Path = local_cluster.kubeconfig_for_user(OPERATOR_USER, SA_GROUPS)
    return path


@pytest.fixture(scope="module")
def store_operator_kubeconfig(local_cluster: Any, operator_kubeconfig: Path) -> Iterator[Path]:
    """The same identity with deploy/recordstore-operator-rbac.yaml too: the RBAC every handler needs."""
    store_rbac = str(REPO / "deploy" / "recordstore-operator-rbac.yaml")
    local_cluster.kubectl("apply", "-f", store_rbac)
    yield operator_kubeconfig
    # Other modules run the operator with deploy/operator-rbac.yaml alone.
    local_cluster.kubectl("delete", "--ignore-not-found", "-f", store_rbac, check=False)


@pytest.fixture(scope="module")
def operator_env(minio_server: MinioInfo, mqtt_broker: BrokerInfo) -> dict[str, str]:
    """The whole operator's settings: the session's MinIO as RecordStore storage, the session broker's client CA
    (gateways with MQTT get a broker client certificate)."""
    return {
        **storage_env(minio_server),
        "MEDCLOUD_BROKER_CLIENT_CA_FILE": mqtt_broker.ca_file,
        "MEDCLOUD_BROKER_CLIENT_CA_KEY_FILE": mqtt_broker.ca_key_file,
        "MEDCLOUD_APP_IMAGE_PREFIX": "registry.test.example/apps",
        "MEDCLOUD_OWN_IMAGE": "registry.test.example/medcloud:test",
    }


@pytest.fixture(scope="module")
def operator(store_operator_kubeconfig: Path, operator_env: dict[str, str]) -> Iterator[RunningOperator]:
    """The whole operator, every handler (``operator_env``), for the module."""
    with run_operator(store_operator_kubeconfig, operator_env, timeout=120) as running:
        yield running


@pytest.fixture
def root(minio_server: MinioInfo) -> Minio:
    """MinIO with the root credentials: to make buckets and to read raw objects."""
    return Minio(
        minio_server.endpoint,
        access_key=minio_server.access_key,
        secret_key=minio_server.secret_key,
        secure=minio_server.secure,
    )


@pytest.fixture
def bucket(root: Minio, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh bucket for one test (named after its module), emptied and removed afterwards."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    name = f"{module}-{uuid.uuid4().hex[:12]}"
    root.make_bucket(name)
    try:
        yield name
    finally:
        for obj in root.list_objects(name, recursive=True):
            root.remove_object(name, obj.object_name)
        root.remove_bucket(name)


# --------------------------------------------------------------------------- operator replicas (peering, sharding)


@pytest.fixture(scope="module")
def peering_cluster(local_cluster: Any, k8s_api_client: client.ApiClient, operator_rbac: None) -> client.ApiClient:
    """CRDs (ours and Kopf's peering ones), the operator's namespace and its RBAC."""
    local_cluster.kubectl("apply", "-f", str(REPO / "deploy" / "kopf-peering-crds.yaml"))
    local_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/clusterkopfpeerings.kopf.dev")
    return k8s_api_client


@pytest.fixture
def replica_kubeconfigs(local_cluster: Any, peering_cluster: client.ApiClient) -> Iterator[dict[str, Path]]:
    """Two operator identities, each bound to exactly the operator's Roles; the bindings go afterwards."""
    if getattr(local_cluster, "audit_log", None) is None:
        pytest.skip("needs the local cluster's audit log")
    rbac = client.RbacAuthorizationV1Api(peering_cluster)
    name = f"medcloud-operator-peering-test-{uuid.uuid4().hex[:6]}"
    subjects = [
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user} for user in (ACTIVE_USER, STANDBY_USER)
    ]
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR_CLUSTER_ROLE},
            "subjects": subjects,
        }
    )
    try:
        rbac.create_namespaced_role_binding(
            OPERATOR_NAMESPACE,
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR_KEYS_ROLE},
                "subjects": subjects,
            },
        )
        yield {user: local_cluster.kubeconfig_for_user(user, (OPERATOR_GROUP,)) for user in (ACTIVE_USER, STANDBY_USER)}
    finally:
        with contextlib.suppress(ApiException):
            rbac.delete_namespaced_role_binding(name, OPERATOR_NAMESPACE)
        with contextlib.suppress(ApiException):
            rbac.delete_cluster_role_binding(name)


# --------------------------------------------------------------------------- the example alliance and its exchange
# One setup for the modules that run the example Consortium's workflows (test_workflows, test_catalog_apps,
# test_bulk_export): each names its own ``ALLIANCE = ExampleAlliance("<label>")``.


@pytest.fixture(scope="module")
def alliance(request: pytest.FixtureRequest) -> ExampleAlliance:
    found = getattr(request.module, "ALLIANCE", None)
    if not isinstance(found, ExampleAlliance):
        raise TypeError(f"{request.module.__name__} uses the alliance fixtures but names no ALLIANCE")
    return found


@pytest.fixture(scope="module")
def admin(k8s_api_client: client.ApiClient) -> ClusterAdmin:
    return ClusterAdmin(k8s_api_client)


@pytest.fixture(scope="module")
def members(alliance: ExampleAlliance, admin: ClusterAdmin, operator: RunningOperator) -> Iterator[list[str]]:
    """Every example institution, Ready with a Ready RecordStore ``emr`` each, and their Consortium."""
    store = {"recordClass": "emr", "retention": {"mode": "GOVERNANCE", "period": "1d"}}
    spec = alliance.consortium_spec()
    with consortium_members(admin, alliance.hospitals(), alliance.consortium, spec, "emr", store) as names:
        yield names


@pytest.fixture(scope="module")
def database(alliance: ExampleAlliance, postgres_server: PostgresInfo) -> str:
    return new_database(postgres_server, alliance.database)


@pytest.fixture(scope="module")
def exchange_grant(local_cluster: Any, admin: ClusterAdmin, alliance: ExampleAlliance, members: list[str]) -> Json:
    """What the operator granted the alliance's exchange (docs/exchange.md), once the shipped RBAC is applied."""
    return granted_exchange(local_cluster, admin, alliance.consortium)


@pytest.fixture(scope="module")
def exchange(
    local_cluster: Any,
    admin: ClusterAdmin,
    alliance: ExampleAlliance,
    exchange_grant: Json,
    database: str,
    minio_server: MinioInfo,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[httpx.Client]:
    """The alliance's exchange, as its own identity, in a thread, with the key service in another."""
    with (
        running_key_service(local_cluster) as keys,
        running_exchange(
            local_cluster,
            admin,
            alliance.consortium,
            database=database,
            minio_server=minio_server,
            key_service_url=keys,
            folder=tmp_path_factory.mktemp(f"exchange-{alliance.label}"),
        ) as http,
    ):
        yield http


@pytest.fixture(scope="module")
def callers(admin: ClusterAdmin, exchange: httpx.Client, members: list[str]) -> dict[str, Caller]:
    """Each member's workflow apps' service account, bound to medcloud-exchange-client in its namespace."""
    return admitted_callers(admin, exchange, members, "workflows")
