"""How the exchange's integration tests stand up a Consortium and its exchange: members provisioned by
the operator, the key service and the exchange in threads as their own identities, and the hospitals'
systems admitted. One copy, used by tests/integration/test_exchange.py, and through the ``alliance``
fixtures of tests/integration/conftest.py by test_workflows.py, test_catalog_apps.py and test_bulk_export.py.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn
import yaml
from kubernetes import config
from kubernetes.client.exceptions import ApiException
from minio import Minio

from medcloud_cli.localcluster.cluster import MinioInfo
from medcloud_cli.localcluster.exchange import AuditBucket
from medcloud_cli.localcluster.kubeconfig import build_token_kubeconfig, write_kubeconfig
from medcloud_cli.localcluster.postgres import PostgresInfo
from medcloud_cli.localcluster.process import free_port
from medcloud_exchange.settings import ExchangeSettings
from medcloud_keyservice.app import create_app as create_key_service
from medcloud_keyservice.settings import KeyServiceSettings
from tests.exchange_support import CLIENT_ROLE, Caller
from tests.operator_support import OPERATOR_NAMESPACE, REPO, ClusterAdmin, institution_code, is_ready, storage_env
from tests.support import wait_for

Json = dict[str, Any]
SA_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{OPERATOR_NAMESPACE}")
KEYSERVICE_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:medcloud-keyservice"
KEYS_AUDIENCE = "medcloud-keyservice"
EXCHANGE_AUDIENCE = "medcloud-exchange"
EXAMPLES = REPO / "examples"
EXAMPLE_CONSORTIUM = "riverton-medical-alliance"


def example_spec(kind: str, name: str) -> Json:
    """The spec of ``kind``/``name`` as examples/ writes it."""
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind and doc["metadata"]["name"] == name:
                spec: Json = doc["spec"]
                return spec
    raise LookupError(f"no {kind} {name} in examples/")


@dataclass(frozen=True)
class ExampleAlliance:
    """The example Consortium and its members (examples/), renamed with a suffix of one test module's own so
    the module's Hospitals, namespaces, database and audit bucket leave every other module's alone.

    A module names its ``ALLIANCE = ExampleAlliance("<label>")``; the fixtures of tests/integration/conftest.py
    (``members``, ``database``, ``exchange``, ``callers``) stand it up."""

    label: str
    """Short, lower-case letters: part of the Consortium's and the database's names."""
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:5])

    @property
    def consortium(self) -> str:
        return f"riverton-{self.label}-{self.suffix}"

    @property
    def database(self) -> str:
        return f"{self.label}_{self.suffix}"

    @property
    def names(self) -> dict[str, str]:
        """Each example member's name -> this module's."""
        members: list[str] = example_spec("Consortium", EXAMPLE_CONSORTIUM)["members"]
        return {example: f"{example}-{self.suffix}" for example in members}

    def __getitem__(self, example: str) -> str:
        return self.names[example]

    def renamed(self, value: Any) -> Any:
        """``value`` with every example member's name replaced by this module's."""
        if isinstance(value, str):
            return self.names.get(value, value)
        if isinstance(value, list):
            return [self.renamed(v) for v in value]
        if isinstance(value, dict):
            return {k: self.renamed(v) for k, v in value.items()}
        return value

    def spec(self, kind: str, name: str) -> Json:
        """The spec of ``kind``/``name`` in examples/, members renamed."""
        spec: Json = self.renamed(example_spec(kind, name))
        return spec

    def consortium_spec(self) -> Json:
        return self.spec("Consortium", EXAMPLE_CONSORTIUM)

    def hospitals(self) -> dict[str, Json]:
        """Each member's Hospital spec: its tier and accreditation as in examples/, a code of its own, no quota
        (the shared test cluster's nodes are small)."""
        out = {}
        for example, name in self.names.items():
            hospital = {**self.spec("Hospital", example), "consortium": self.consortium}
            hospital["institutionCode"] = institution_code(name)
            hospital.pop("quota", None)
            out[name] = hospital
        return out


def exchange_operator_env(minio_server: MinioInfo, **extra: str) -> dict[str, str]:
    """Operator settings with MinIO and a key service URL, so it deploys exchanges; audit kept for a day."""
    return {
        **storage_env(minio_server),
        "MEDCLOUD_KEY_SERVICE_URL": "http://medcloud-keyservice.medcloud-system.svc:8080",
        "MEDCLOUD_EXCHANGE_AUDIT_RETENTION_DAYS": "1",
        "MEDCLOUD_OWN_IMAGE": "registry.test.example/medcloud:0.0.1",
        **extra,
    }


def readiness_probed(port: int) -> dict[str, str]:
    """Operator settings that ask the exchange on loopback ``port`` whether it serves, every second
    (in a test the exchange runs as a process of its own, where no kubelet probes it; docs/exchange.md)."""
    return {
        "MEDCLOUD_EXCHANGE_READINESS_URL": f"http://127.0.0.1:{port}/readyz",
        "MEDCLOUD_EXCHANGE_PROBE_SECONDS": "1",
        "MEDCLOUD_EXCHANGE_PROBE_TIMEOUT_SECONDS": "5",
    }


def exchange_account(consortium: str) -> str:
    """The service account the operator grants the Consortium's exchange (docs/exchange.md)."""
    return f"medcloud-exchange-{consortium}"


@contextlib.contextmanager
def serve(app: Any, port: int | None = None) -> Iterator[str]:
    """The app on loopback (on ``port``, else a free one) in a thread, until the block ends."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the server to listen", timeout=30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def token(admin: ClusterAdmin, namespace: str, account: str, audience: str) -> str:
    with contextlib.suppress(ApiException):
        admin.core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    request = {"spec": {"audiences": [audience], "expirationSeconds": 3600}}
    return str(admin.core.create_namespaced_service_account_token(account, namespace, request).status.token)


@contextlib.contextmanager
def consortium_members(
    admin: ClusterAdmin,
    hospitals: Mapping[str, Json],
    consortium: str,
    spec: Json,
    store: str,
    store_spec: Json,
    timeout: float = 180,
) -> Iterator[list[str]]:
    """The Hospitals Ready (with their KEK), each with a Ready RecordStore ``store``, and their Consortium;
    all deleted again afterwards, stores before their Hospitals."""
    names = list(hospitals)
    try:
        for name, hospital in hospitals.items():
            admin.create("Hospital", name, hospital)
        for name in names:

            def hospital_ready(name: str = name) -> bool:
                obj = admin.get("Hospital", name)
                return is_ready(obj) and bool((obj or {})["status"].get("kek"))

            wait_for(hospital_ready, f"Hospital {name} Ready", timeout=timeout)
            admin.create("RecordStore", store, store_spec, f"hospital-{name}")
        for name in names:

            def store_ready(name: str = name) -> bool:
                obj = admin.get("RecordStore", store, f"hospital-{name}")
                return is_ready(obj) and (obj or {}).get("status", {}).get("phase") == "Ready"

            wait_for(store_ready, f"RecordStore {name}/{store} Ready", timeout=timeout)
        admin.create("Consortium", consortium, spec)
        yield names
    finally:
        admin.delete("Consortium", consortium)
        for name in names:
            admin.delete("RecordStore", store, f"hospital-{name}")
        for name in names:
            wait_for(partial(admin.gone, "RecordStore", store, f"hospital-{name}"), "store gone", 120)
            admin.delete("Hospital", name)
        for name in names:
            wait_for(partial(admin.gone, "Hospital", name), f"Hospital {name} gone", 180)


@contextlib.contextmanager
def key_service(local_cluster: Any) -> Iterator[str]:
    """The key service in a thread, as its own identity with deploy/keyservice-rbac.yaml."""
    local_cluster.kubectl("apply", "-f", str(REPO / "deploy" / "keyservice-rbac.yaml"))
    api = config.new_client_from_config(config_file=str(local_cluster.kubeconfig_for_user(KEYSERVICE_USER, SA_GROUPS)))
    settings = KeyServiceSettings(operator_namespace=OPERATOR_NAMESPACE, audience=KEYS_AUDIENCE)
    try:
        with serve(create_key_service(settings, api)) as url:
            yield url
    finally:
        api.close()


def new_database(postgres_server: PostgresInfo, name: str) -> str:
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.dsn_for(name)


def granted_exchange(local_cluster: Any, admin: ClusterAdmin, consortium: str) -> Json:
    """Apply the ClusterRoles exactly as deploy/ and the chart ship them (the one hospitals bind, and the
    exchange's own, which the operator binds per Consortium along with the members' keys); the grant."""
    for rbac in ("exchange-client-rbac.yaml", "exchange-rbac.yaml"):
        local_cluster.kubectl("apply", "-f", str(REPO / "deploy" / rbac))
    granted: Json = wait_for(
        lambda: ((admin.get("Consortium", consortium) or {}).get("status") or {}).get("exchange"),
        "the operator to grant the exchange",
    )
    return granted


def exchange_settings(
    local_cluster: Any,
    admin: ClusterAdmin,
    consortium: str,
    *,
    database: str,
    audit: AuditBucket,
    minio_server: MinioInfo,
    key_service_url: str,
    folder: Path,
    **overrides: Any,
) -> ExchangeSettings:
    """The exchange's settings as its own identity: a real token of its service account for the API server
    (a client certificate's name could not hold this user name: 64 characters at most) and for the key service."""
    account = exchange_account(consortium)
    token_file = folder / "keyservice-token"
    token_file.write_text(token(admin, OPERATOR_NAMESPACE, account, KEYS_AUDIENCE))
    own = token(admin, OPERATOR_NAMESPACE, account, str(admin.api.configuration.host))
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{account}"
    kubeconfig = write_kubeconfig(
        folder / "kubeconfig",
        build_token_kubeconfig(local_cluster.state.server, local_cluster.ca.paths.cert, user, own),
    )
    return ExchangeSettings(
        consortium=consortium,
        kubeconfig=kubeconfig,
        database_url=database,
        blind_index_key=base64.b64encode(os.urandom(32)).decode(),
        audit_endpoint=minio_server.endpoint,
        audit_secure=False,
        audit_access_key=audit.access_key,
        audit_secret_key=audit.secret_key,
        audit_bucket=audit.bucket,
        key_service_url=key_service_url,
        key_service_token_file=token_file,
        **overrides,
    )


@contextlib.contextmanager
def running_exchange(
    local_cluster: Any,
    admin: ClusterAdmin,
    consortium: str,
    *,
    database: str,
    minio_server: MinioInfo,
    key_service_url: str,
    folder: Path,
) -> Iterator[httpx.Client]:
    """The Consortium's exchange granted by the operator, serving in a thread as its own identity; a client."""
    from medcloud_cli.localcluster.exchange import make_audit_bucket
    from medcloud_exchange.app import create_app

    granted_exchange(local_cluster, admin, consortium)
    settings = exchange_settings(
        local_cluster,
        admin,
        consortium,
        database=database,
        audit=make_audit_bucket(minio_server, f"exchange-audit-{consortium}"),
        minio_server=minio_server,
        key_service_url=key_service_url,
        folder=folder,
    )
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def admitted_callers(admin: ClusterAdmin, http: httpx.Client, members: list[str], account: str) -> dict[str, Caller]:
    """Each member's system ``account``, bound to medcloud-exchange-client in its namespace, once admitted."""
    out = {}
    for hospital in members:
        namespace = f"hospital-{hospital}"
        out[hospital] = Caller(token(admin, namespace, account, EXCHANGE_AUDIENCE))
        admin.rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": f"{account}-exchange"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLIENT_ROLE},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            },
        )
    probe = f"/fhir/DocumentReference?patient=Patient/{uuid.uuid4()}"
    for hospital in members:
        # RBAC grants reach the authorizer a moment after they are written.
        def admitted(caller: Caller = out[hospital]) -> bool:
            return http.get(probe, headers=caller.headers()).status_code == 200

        wait_for(admitted, f"{hospital}'s {account} admitted", timeout=30)
    return out


def raw_objects(minio_server: MinioInfo) -> Iterator[bytes]:
    """Every stored version of every object in MinIO, as its raw bytes (for at-rest scans)."""
    root = Minio(
        minio_server.endpoint, access_key=minio_server.access_key, secret_key=minio_server.secret_key, secure=False
    )
    for bucket in root.list_buckets():
        for obj in root.list_objects(bucket.name, recursive=True, include_version=True):
            if obj.is_delete_marker:
                continue
            response = root.get_object(bucket.name, obj.object_name, version_id=obj.version_id)
            try:
                yield response.read()
            finally:
                response.close()
                response.release_conn()
