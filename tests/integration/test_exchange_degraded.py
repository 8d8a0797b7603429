"""The Consortium is Degraded while its exchange's PostgreSQL is down, and Ready again on its own.

Against the real API server, MinIO and a PostgreSQL server of the test's own (so that stopping it
touches no other test). The exchange's pods run on KWOK nodes, which report them ready whatever
happens, so the operator also asks the exchange itself (``MEDCLOUD_EXCHANGE_READINESS_URL``): here the
exchange runs in this process, on the port that URL names, with the database and the audit bucket
and user the operator provisioned for it. Stopping PostgreSQL under it turns the Consortium
Degraded (ExchangeReady False ExchangeUnavailable, naming PostgreSQL); starting it again makes it
Ready with nothing done by hand.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster, MinioInfo
from medcloud_cli.localcluster.exchange import AuditBucket
from medcloud_cli.localcluster.postgres import PostgresInfo
from medcloud_cli.localcluster.process import ServerProcess, free_port
from medcloud_exchange.app import create_app
from tests.exchange_harness import exchange_operator_env, exchange_settings, readiness_probed, serve
from tests.operator_support import (
    OPERATOR_NAMESPACE,
    ClusterAdmin,
    Json,
    RunningOperator,
    condition,
    hospital_spec,
    raw,
    run_operator,
)
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.minio]

SUFFIX = uuid.uuid4().hex[:6]
CONSORTIUM = f"degraded-{SUFFIX}"
MEMBER = f"lakeside-{SUFFIX}"
ACCOUNT = f"medcloud-exchange-{CONSORTIUM}"
EXCHANGE_PORT = free_port()


@pytest.fixture(scope="module")
def operator(store_operator_kubeconfig: Path, minio_server: MinioInfo) -> Iterator[RunningOperator]:
    """The operator that deploys exchanges and asks this module's exchange for its readiness every second."""
    env = exchange_operator_env(minio_server, **readiness_probed(EXCHANGE_PORT))
    with run_operator(store_operator_kubeconfig, env, timeout=120) as running:
        yield running


@pytest.fixture(scope="module")
def admin(k8s_api_client: client.ApiClient, crds: None) -> ClusterAdmin:
    return ClusterAdmin(k8s_api_client)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostgresInfo, ServerProcess]]:
    """A PostgreSQL server of this module's own, and its process (to stop and start)."""
    private = LocalCluster(
        tmp_path_factory.mktemp("pg"), ClusterOptions(with_kubernetes=False, with_minio=False, with_broker=False)
    )
    state = private.start()
    try:
        assert state.postgres is not None
        (server,) = [p for p in private.processes if p.name == "postgres"]
        yield state.postgres, server
    finally:
        private.stop()


@pytest.fixture(scope="module")
def consortium(
    admin: ClusterAdmin, operator: RunningOperator, postgres: tuple[PostgresInfo, ServerProcess]
) -> Iterator[str]:
    """A Consortium of one Ready member, and the database Secret its exchange's Deployment waits for."""
    admin.create("Hospital", MEMBER, hospital_spec(MEMBER))
    admin.core.create_namespaced_secret(
        OPERATOR_NAMESPACE,
        {"metadata": {"name": f"exchange-{CONSORTIUM}-app"}, "stringData": {"uri": postgres[0].dsn}},
    )
    admin.create(
        "Consortium", CONSORTIUM, {"displayName": "Degraded test", "leadHospital": MEMBER, "members": [MEMBER]}
    )
    try:
        yield CONSORTIUM
    finally:
        admin.delete("Consortium", CONSORTIUM)
        admin.delete("Hospital", MEMBER)
        raw(admin.core.delete_namespaced_secret, f"exchange-{CONSORTIUM}-app", OPERATOR_NAMESPACE)
        wait_for(lambda: admin.gone("Hospital", MEMBER), f"Hospital {MEMBER} gone", 180)


def exchange_ready(admin: ClusterAdmin) -> tuple[str | None, Json | None]:
    """The Consortium's phase and its ExchangeReady condition."""
    body = admin.get("Consortium", CONSORTIUM)
    return ((body or {}).get("status") or {}).get("phase"), condition(body, "ExchangeReady")


def reached(admin: ClusterAdmin, phase: str, reason: str) -> Json | None:
    found_phase, found = exchange_ready(admin)
    return found if found_phase == phase and found is not None and found["reason"] == reason else None


def test_the_consortium_is_degraded_while_postgres_is_down_and_ready_again_on_its_own(
    local_cluster: Any,
    admin: ClusterAdmin,
    consortium: str,
    postgres: tuple[PostgresInfo, ServerProcess],
    minio_server: MinioInfo,
    tmp_path: Path,
) -> None:
    # The operator deploys the exchange (pods Ready on KWOK), but nothing answers at its readiness URL yet:
    # it is not reported serving.
    wait_for(lambda: raw(admin.apps.read_namespaced_deployment, ACCOUNT, OPERATOR_NAMESPACE), "the Deployment", 90)
    starting = wait_for(lambda: reached(admin, "Ready", "ExchangeStarting"), "ExchangeStarting (nothing serves)", 90)
    assert "cannot be reached" in starting["message"]

    # The exchange itself, with the audit bucket and user the operator made and the module's PostgreSQL.
    secret = raw(admin.core.read_namespaced_secret, f"{ACCOUNT}-audit", OPERATOR_NAMESPACE) or {}
    audit = AuditBucket(
        f"medcloud-exchange-audit-{CONSORTIUM}",
        base64.b64decode(secret["data"]["accessKey"]).decode(),
        base64.b64decode(secret["data"]["secretKey"]).decode(),
    )
    info, server = postgres
    settings = exchange_settings(
        local_cluster,
        admin,
        CONSORTIUM,
        database=info.dsn,
        audit=audit,
        minio_server=minio_server,
        key_service_url="http://127.0.0.1:1",  # no document is read here
        folder=tmp_path,
        database_timeout_seconds=1,
    )
    with serve(create_app(settings), port=EXCHANGE_PORT):
        serving = wait_for(lambda: reached(admin, "Ready", "ExchangeServing"), "ExchangeServing", 60)
        assert serving["status"] == "True"

        server.stop()
        degraded = wait_for(lambda: reached(admin, "Degraded", "ExchangeUnavailable"), "Degraded", 60)
        assert degraded["status"] == "False"
        assert "PostgreSQL" in degraded["message"], degraded["message"]
        # Kopf posts Events from a queue of its own: the Warning follows the status write, a moment later.
        wait_for(
            lambda: any(
                e.involved_object.name == CONSORTIUM and e.reason == "ExchangeUnavailable"
                for e in admin.core.list_namespaced_event("default").items
            ),
            "a Warning Event ExchangeUnavailable on the Consortium",
            30,
        )

        server.start()
        back = wait_for(lambda: reached(admin, "Ready", "ExchangeServing"), "Ready again on its own", 90)
        assert back["status"] == "True"
