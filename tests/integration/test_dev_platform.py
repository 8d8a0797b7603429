"""`medcloud dev up`'s platform: the key service runs next to the operator and the API, and records work through it.

This module starts a private local cluster and calls the function `dev up`
calls (:func:`medcloud_cli.localcluster.platform.start_platform`), so the key
service, the operator and the API run as separate processes with their own
service-account tokens and the RBAC of ``deploy/*.yaml``, exactly as after
`medcloud dev up`. The servers die with the test process (they are not
detached). A record client then gets its keys from that key service with a
real service account token from the TokenRequest API, through the
`medcloud records` CLI and through :class:`HttpKeyProvider`.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from medcloud.records.keyclient import HttpKeyProvider, KeyAccessDeniedError
from medcloud_analytics import flatten
from medcloud_analytics.dashboard import document, publish
from medcloud_analytics.indicators import compute_all
from medcloud_analytics.lake import Lake, connect
from medcloud_cli.commands.records import open_client, store_access
from medcloud_cli.localcluster.cluster import ClusterOptions, ClusterState, LocalCluster
from medcloud_cli.localcluster.platform import (
    KEY_SERVICE_AUDIENCE,
    SYSTEM_NAMESPACE,
    PlatformInfo,
    service_account_token,
    start_platform,
)
from medcloud_cli.localcluster.process import pid_alive
from medcloud_cli.main import app as medcloud_cli
from tests.analytics_activity import TIERS, activity
from tests.bulk_support import COMMISSION_ROLE
from tests.operator_support import REPO, ClusterAdmin
from tests.support import wait_for

pytestmark = pytest.mark.cluster

GROUP, VERSION = "medcloud.io", "v1alpha1"
KEYSERVICE_USER = f"system:serviceaccount:{SYSTEM_NAMESPACE}:medcloud-keyservice"
Json = dict[str, Any]


@dataclass
class DevPlatform(ClusterAdmin):
    """The platform ``dev up`` started, and admin access to its cluster."""

    cluster: LocalCluster
    info: PlatformInfo

    def token(self, namespace: str, account: str, audience: str = KEY_SERVICE_AUDIENCE) -> str:
        """A real bound token of a service account (made if missing), from the TokenRequest API."""
        try:
            self.core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
        except ApiException as exc:
            if exc.status != 409:
                raise
        return service_account_token(self.api, account, namespace, audiences=[audience], seconds=600)

    def grant_keys(self, namespace: str, account: str, store: str) -> None:
        """RBAC: ``get`` on ``recordstores/keys`` of one store, for one service account."""
        name = f"keys-{store}-{account}"
        rule = {"apiGroups": [GROUP], "resources": ["recordstores/keys"], "resourceNames": [store], "verbs": ["get"]}
        self.rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": [rule]})
        self.rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            },
        )


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevPlatform]:
    """A private local cluster with the platform `dev up` starts (no KWOK nodes or broker: nothing here runs pods)."""
    cluster = LocalCluster(
        tmp_path_factory.mktemp("dev-platform"),
        ClusterOptions(nodes=0, with_kwok=False, with_broker=False),
        progress=lambda msg: print(f"[dev platform] {msg}", flush=True),
    )
    cluster.start()
    api: client.ApiClient | None = None
    try:
        info = start_platform(cluster)
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        yield DevPlatform(api, cluster, info)
    finally:
        if api is not None:
            api.close()
        cluster.stop()


def _condition(obj: Json | None, type_: str) -> Json | None:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def _ready(obj: Json | None) -> bool:
    cond = _condition(obj, "Ready")
    return bool(cond and cond["status"] == "True")


@pytest.fixture(scope="module")
def store(dev: DevPlatform) -> tuple[str, str]:
    """A Hospital and a RecordStore, Ready, provisioned by the dev platform's own operator; (namespace, store)."""
    hospital = f"dev-{uuid.uuid4().hex[:6]}"
    dev.custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        "hospitals",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Hospital",
            "metadata": {"name": hospital},
            "spec": {"displayName": "Dev General", "institutionCode": "DEV00001", "tier": "county"},
        },
    )
    namespace = f"hospital-{hospital}"

    def hospital_ready() -> bool:
        obj = dev.custom.get_cluster_custom_object(GROUP, VERSION, "hospitals", hospital)
        return _ready(obj) and bool(obj["status"].get("kek"))

    wait_for(hospital_ready, f"Hospital {hospital} to be Ready", timeout=120)
    name = "emr"
    dev.custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "recordstores",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RecordStore",
            "metadata": {"name": name},
            "spec": {"recordClass": "documents", "retention": {"mode": "GOVERNANCE", "period": "1d"}},
        },
    )

    def store_ready() -> bool:
        obj = dev.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "recordstores", name)
        return _ready(obj) and obj["status"].get("phase") == "Ready"

    wait_for(store_ready, f"RecordStore {namespace}/{name} to be Ready", timeout=120)
    return namespace, name


def _audit_lines(dev: DevPlatform) -> list[Json]:
    log = dev.cluster.log_dir / "keyservice.log"
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"event":"medcloud_keyservice.unwrap"' in line:
            lines.append(json.loads(line))
    return lines


# --------------------------------------------------------------------------- the process


def test_dev_up_runs_the_key_service_ready_and_recorded_for_status_and_down(dev: DevPlatform) -> None:
    names = {p.name: p for p in dev.cluster.processes}
    assert {"keyservice", "operator", "api"} <= set(names)
    assert names["keyservice"].running()
    url = dev.info.key_service_url
    assert url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{url}/healthz").status_code == 200
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200, ready.text

    # What `dev status` and `dev down` read.
    state = ClusterState.load(dev.cluster.state_dir / LocalCluster.STATE_FILE)
    assert state.pids["keyservice"] == names["keyservice"].pid
    assert state.ports["keyservice"] == int(url.rsplit(":", 1)[1])
    assert state.extra["urls"]["keyservice"] == url
    status = CliRunner().invoke(medcloud_cli, ["dev", "status", "--state-dir", str(dev.cluster.state_dir)])
    assert status.exit_code == 0, status.output
    row = next(line for line in status.output.splitlines() if "keyservice" in line and "running" in line)
    assert str(names["keyservice"].pid) in row
    assert str(state.ports["keyservice"]) in row
    assert f"keyservice: {url}" in status.output
    assert pid_alive(state.pids["keyservice"])


def test_the_key_service_runs_as_its_own_restricted_identity(dev: DevPlatform) -> None:
    """Its kubeconfig is its service account's token, bound by deploy/keyservice-rbac.yaml alone."""
    kubeconfig = dev.cluster.state_dir / "kubeconfig-medcloud-keyservice"
    assert (kubeconfig.stat().st_mode & 0o777) == 0o600

    def can_i(*args: str) -> str:
        proc = dev.cluster.kubectl("auth", "can-i", *args, kubeconfig=kubeconfig, check=False)
        return str(proc.stdout.strip())

    whoami = dev.cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig)
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == KEYSERVICE_USER
    assert can_i("get", "secrets", "-n", SYSTEM_NAMESPACE) == "yes"
    assert can_i("create", "tokenreviews.authentication.k8s.io") == "yes"
    assert can_i("create", "subjectaccessreviews.authorization.k8s.io") == "yes"
    # Secrets by name, in the operator namespace only, and never written.
    assert can_i("list", "secrets", "-n", SYSTEM_NAMESPACE) == "no"
    assert can_i("watch", "secrets", "-n", SYSTEM_NAMESPACE) == "no"
    assert can_i("create", "secrets", "-n", SYSTEM_NAMESPACE) == "no"
    assert can_i("get", "secrets", "-n", "kube-system") == "no"
    assert can_i("get", "recordstores.medcloud.io", "-A") == "no"


# --------------------------------------------------------------------------- records through it


def test_stores_name_the_dev_key_service_and_records_put_get_through_it(
    dev: DevPlatform, store: tuple[str, str], tmp_path: Path
) -> None:
    namespace, name = store
    secret_name = dev.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "recordstores", name)["status"][
        "secretRef"
    ]["name"]
    secret = dev.core.read_namespaced_secret(secret_name, namespace)
    assert base64.b64decode(secret.data["MEDCLOUD_KEY_SERVICE_URL"]).decode() == dev.info.key_service_url

    dev.grant_keys(namespace, "records-app", name)
    token = dev.token(namespace, "records-app")
    source = tmp_path / "discharge.pdf"
    source.write_bytes(os.urandom(200_000))
    admin = ["-n", namespace, "--kubeconfig", str(dev.cluster.kubeconfig)]
    # No --key-service and no MEDCLOUD_KEY_SERVICE_URL: the URL comes from the store's Secret.
    env = {"MEDCLOUD_KEY_SERVICE_TOKEN": token, "MEDCLOUD_KEY_SERVICE_URL": None}
    runner = CliRunner()

    def put() -> Any:
        # RBAC grants reach the authorizer's cache a moment after they are written.
        result = runner.invoke(medcloud_cli, ["records", "put", name, "visits/1", str(source), *admin], env=env)
        return result if result.exit_code == 0 else None

    stored = wait_for(put, "records put through the key service", timeout=30, interval=0.5)
    assert "key version 1" in stored.output
    target = tmp_path / "back.pdf"
    got = runner.invoke(medcloud_cli, ["records", "get", name, "visits/1", str(target), *admin], env=env)
    assert got.exit_code == 0, got.output
    assert target.read_bytes() == source.read_bytes()

    # Without the grant, or with a token for another audience, there are no keys.
    stranger = dev.token(namespace, "billing-app")
    refused = runner.invoke(
        medcloud_cli,
        ["records", "get", name, "visits/1", str(tmp_path / "no.pdf"), *admin],
        env={**env, "MEDCLOUD_KEY_SERVICE_TOKEN": stranger},
    )
    assert refused.exit_code == 1
    assert "403" in refused.output
    assert not (tmp_path / "no.pdf").exists()
    access = store_access(dev.api, namespace, name)
    api_audience = dev.token(namespace, "records-app", audience=dev.api.configuration.host)
    with (
        HttpKeyProvider(dev.info.key_service_url, namespace, name, token=api_audience) as keys,
        pytest.raises(KeyAccessDeniedError, match="401"),
    ):
        open_client(access, keys).get_bytes("visits/1")
    # The record client over HttpKeyProvider, with the granted token.
    with HttpKeyProvider(dev.info.key_service_url, namespace, name, token=token) as keys:
        records = open_client(access, keys)
        assert records.get_bytes("visits/1") == source.read_bytes()

    # The key service process audited each request, in its log, naming versions and never the key or token.
    lines = _audit_lines(dev)
    app_user = f"system:serviceaccount:{namespace}:records-app"
    results = {(line["user"], line["recordStore"], line["result"]) for line in lines}
    assert (app_user, name, "granted") in results
    assert (f"system:serviceaccount:{namespace}:billing-app", name, "denied") in results
    assert (None, name, "unauthenticated") in results
    log_text = (dev.cluster.log_dir / "keyservice.log").read_text(errors="replace")
    assert token not in log_text
    assert stranger not in log_text


# --------------------------------------------------------------------------- the example consortium's exchange


def test_dev_up_runs_the_example_consortiums_exchange_which_serves_once_the_consortium_exists(
    dev: DevPlatform,
) -> None:
    url = dev.info.exchange_url
    assert url is not None
    assert url.startswith("http://127.0.0.1:")
    names = {p.name: p for p in dev.cluster.processes}
    assert names["exchange"].running()
    assert httpx.get(f"{url}/fhir/metadata").json()["resourceType"] == "CapabilityStatement"
    state = ClusterState.load(dev.cluster.state_dir / LocalCluster.STATE_FILE)
    assert state.extra["urls"]["exchange"] == url

    # A hospital system of the example consortium, bound as the chart and deploy/ say.
    consortium = dev.info.exchange_consortium
    assert consortium is not None
    manifest = yaml.safe_load((REPO / "examples" / "consortium.yaml").read_text())
    lead = manifest["spec"]["leadHospital"]
    namespace = f"hospital-{lead}"
    dev.core.create_namespace({"metadata": {"name": namespace}})
    dev.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "emr-exchange"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "medcloud-exchange-client",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "emr", "namespace": namespace}],
        },
    )
    caller = dev.token(namespace, "emr", audience="medcloud-exchange")
    headers = {
        "Authorization": f"Bearer {caller}",
        "X-MedCloud-Practitioner": "Practitioner/dr-li",
        "X-MedCloud-Purpose-Of-Use": "TREAT",
    }
    query = {"patient": f"Patient/{uuid.uuid4()}"}
    before = httpx.get(f"{url}/fhir/DocumentReference", params=query, headers=headers)
    assert before.status_code == 503, before.text
    assert before.json()["resourceType"] == "OperationOutcome"

    dev.custom.create_cluster_custom_object(GROUP, VERSION, "consortia", manifest)

    def served() -> bool:
        return httpx.get(f"{url}/fhir/DocumentReference", params=query, headers=headers).status_code == 200

    # The operator binds the exchange's ClusterRole; then the exchange can ask who calls.
    wait_for(served, "the exchange to serve the example consortium", timeout=60)
    found = httpx.get(f"{url}/fhir/DocumentReference", params=query, headers=headers).json()
    assert (found["resourceType"], found["total"]) == ("Bundle", 0)


def test_dev_up_makes_the_analytics_bucket_and_the_api_serves_the_dashboard_with_its_read_only_key(
    dev: DevPlatform,
) -> None:
    """The writer's key is left for `medcloud analytics` (mode 0600); the API reads with the dashboard key."""
    state = ClusterState.load(dev.cluster.state_dir / LocalCluster.STATE_FILE)
    env_file = Path(state.extra["analytics"]["envFile"])
    assert env_file.stat().st_mode & 0o777 == 0o600
    env = dict(line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines())
    assert env["MEDCLOUD_ANALYTICS_ACCESS_KEY"] == "analytics-writer"
    assert env["MEDCLOUD_ANALYTICS_BUCKET"] == state.extra["analytics"]["bucket"] == "analytics"
    lake = Lake(
        env["MEDCLOUD_ANALYTICS_ENDPOINT"], "analytics", "analytics-writer", env["MEDCLOUD_ANALYTICS_SECRET_KEY"]
    )
    lake.write(flatten.table(list(activity())), "dev-batch")
    publish(lake, document(compute_all(connect(lake), TIERS), "2026-12-02T00:00:00Z"))

    dev.cluster.kubectl("apply", "-f", str(REPO / "deploy" / "city-health-commission-rbac.yaml"))
    namespace = "city-health-commission"
    dev.core.create_namespace({"metadata": {"name": namespace}})
    dev.rbac.create_cluster_role_binding(
        {
            "metadata": {"name": "dev-commission"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": COMMISSION_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": "indicators", "namespace": namespace}],
        }
    )
    token = dev.token(namespace, "indicators", audience=str(dev.api.configuration.host))

    def page() -> httpx.Response | None:
        got = httpx.get(f"{dev.info.api_url}/v1/dashboard", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        return got if got.status_code == 200 else None

    served = wait_for(page, "the dashboard served", timeout=30)
    assert served.text.count("<svg") == 5
