"""The example consortium's exchange on the local cluster, as `medcloud dev up` runs it (docs/exchange.md).

What the operator does not provision yet, this does for the local cluster only: the
exchange's ServiceAccount and its tokens (the API server's audience for its kubeconfig, the
key service's for its keys), a database on the local PostgreSQL, the object-locked audit
bucket with a user that may put, get and list only, and a fresh consortium key. The
RBAC is the operator's (it binds deploy/exchange-rbac.yaml and grants the members' keys
when the Consortium is applied); until `kubectl apply -f examples/`, the exchange answers
503 (no such Consortium).
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import yaml
from minio import Minio, MinioAdmin
from minio.commonconfig import COMPLIANCE
from minio.credentials.providers import StaticProvider
from minio.objectlockconfig import DAYS, ObjectLockConfig

from medcloud_cli.localcluster.cluster import LocalCluster, MinioInfo
from medcloud_cli.localcluster.kubeconfig import build_token_kubeconfig, write_kubeconfig
from medcloud_cli.localcluster.process import free_port
from medcloud_operator.builders.exchange import account_name
from medcloud_operator.builders.exchangeserver import audit_policy

KEY_SERVICE_AUDIENCE = "medcloud-keyservice"
AUDIT_RETENTION_DAYS = 1
"""A development cluster's audit trail: locked (COMPLIANCE) for a day, then removable."""


@dataclass(frozen=True)
class AuditBucket:
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)


def make_audit_bucket(minio: MinioInfo, name: str, days: int = AUDIT_RETENTION_DAYS) -> AuditBucket:
    """The object-locked, versioned audit bucket (COMPLIANCE) and a user that may put, get and list it, nothing else."""
    root = Minio(minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=minio.secure)
    if not root.bucket_exists(name):
        root.make_bucket(name, object_lock=True)
        root.set_object_lock_config(name, ObjectLockConfig(COMPLIANCE, days, DAYS))
    admin = MinioAdmin(
        endpoint=minio.endpoint, credentials=StaticProvider(minio.access_key, minio.secret_key), secure=minio.secure
    )
    policy = audit_policy(name)
    user, secret = f"{name}-writer", secrets.token_urlsafe(24)
    admin.policy_add(f"{name}-append", policy=policy)
    # Adding an existing user sets its secret: a later `dev up` gets fresh credentials.
    admin.user_add(user, secret)
    admin.attach_policy([f"{name}-append"], user=user)
    return AuditBucket(name, user, secret)


def example_consortium(repo: Path) -> str:
    """The name of the Consortium in examples/consortium.yaml."""
    return str(yaml.safe_load((repo / "examples" / "consortium.yaml").read_text())["metadata"]["name"])


def _database(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
        return bool(response.status == 200)


def start_exchange(
    cluster: LocalCluster,
    consortium: str,
    namespace: str,
    key_service_url: str,
    tokens: Callable[[str, list[str]], str],
    python: str = sys.executable,
) -> str:
    """Run the consortium's exchange as its own identity; returns its base URL once it answers.

    ``tokens(account, audiences)`` issues a bound token of a ServiceAccount in ``namespace``.
    """
    state = cluster.state
    assert state is not None
    assert state.postgres is not None, "the exchange needs the local PostgreSQL"
    assert state.minio is not None, "the exchange needs the local MinIO"
    account = account_name(consortium)
    cluster.kubectl("create", "serviceaccount", account, "-n", namespace, check=False)
    own, keys = tokens(account, []), tokens(account, [KEY_SERVICE_AUDIENCE])
    folder = cluster.state_dir / "exchange"
    folder.mkdir(exist_ok=True)
    token_file = folder / "keyservice-token"
    token_file.write_text(keys)
    token_file.chmod(0o600)
    user = f"system:serviceaccount:{namespace}:{account}"
    kubeconfig = write_kubeconfig(
        cluster.state_dir / f"kubeconfig-{account}",
        build_token_kubeconfig(state.server, cluster.ca.paths.cert, user, own),
    )
    database = f"exchange_{consortium.replace('-', '_')}"
    _database(state.postgres.dsn, database)
    audit = make_audit_bucket(state.minio, f"exchange-audit-{consortium}")
    port = free_port()
    state.ports["exchange"] = port
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(Path.home()),
        "PYTHONUNBUFFERED": "1",
        "MEDCLOUD_EXCHANGE_CONSORTIUM": consortium,
        "MEDCLOUD_EXCHANGE_KUBECONFIG": str(kubeconfig),
        "MEDCLOUD_EXCHANGE_DATABASE_URL": state.postgres.dsn_for(database),
        "MEDCLOUD_EXCHANGE_BLIND_INDEX_KEY": base64.b64encode(os.urandom(32)).decode(),
        "MEDCLOUD_EXCHANGE_AUDIT_ENDPOINT": state.minio.endpoint,
        "MEDCLOUD_EXCHANGE_AUDIT_SECURE": "true" if state.minio.secure else "false",
        "MEDCLOUD_EXCHANGE_AUDIT_ACCESS_KEY": audit.access_key,
        "MEDCLOUD_EXCHANGE_AUDIT_SECRET_KEY": audit.secret_key,
        "MEDCLOUD_EXCHANGE_AUDIT_BUCKET": audit.bucket,
        "MEDCLOUD_EXCHANGE_KEY_SERVICE_URL": key_service_url,
        "MEDCLOUD_EXCHANGE_KEY_SERVICE_TOKEN_FILE": str(token_file),
        "MEDCLOUD_EXCHANGE_HOST": "127.0.0.1",
        "MEDCLOUD_EXCHANGE_PORT": str(port),
    }
    url = f"http://127.0.0.1:{port}"
    process = cluster.spawn("exchange", [python, "-m", "medcloud_exchange"], (port,), env=env)
    process.wait_ready(lambda: _healthy(f"{url}/healthz"), 60)
    return url
