"""MedCloud itself on the local cluster: CRDs, RBAC, the key service, the operator, the control API, Prometheus.

`medcloud dev up` runs this after the servers are up. The key service, the
operator and the API run as local processes, each with a service-account
token bound by the same least-privilege RBAC manifests a real install uses
(`deploy/*.yaml`), so a missing permission shows up here, not first in
production. The key service starts first: the operator writes its URL into
every RecordStore's credentials Secret (``MEDCLOUD_KEY_SERVICE_URL``), which
is where `medcloud records` and other record clients look for it.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

from medcloud.kube.crds import install_crds
from medcloud_cli.localcluster import netsetup, platformservices, prometheus
from medcloud_cli.localcluster.analytics import make_analytics_bucket
from medcloud_cli.localcluster.cluster import LocalCluster
from medcloud_cli.localcluster.exchange import example_consortium, start_exchange
from medcloud_cli.localcluster.kubeconfig import build_token_kubeconfig, write_kubeconfig
from medcloud_cli.localcluster.process import free_port
from medcloud_keyservice.settings import DEFAULT_AUDIENCE

SYSTEM_NAMESPACE = "medcloud-system"
# The identities the platform's processes run as (deploy/*-rbac.yaml), and the
# city administrator whose token `dev up` prints for the control API.
SERVICE_ACCOUNTS = ("medcloud-operator", "medcloud-api", "medcloud-keyservice")
CITY_ADMIN = "city-admin"
KEY_SERVICE_AUDIENCE = DEFAULT_AUDIENCE
# One day: a dev session; `dev up` again issues fresh tokens.
TOKEN_SECONDS = 86400


def deploy_dir() -> Path:
    """The repository's deploy/ folder (the RBAC manifests a real install applies too)."""
    path = Path(__file__).resolve().parents[3] / "deploy"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: `medcloud dev up` runs from a source checkout")
    return path


@dataclass
class PlatformInfo:
    api_url: str
    city_admin_token: str
    operator_metrics: str
    key_service_url: str
    prometheus_url: str
    exchange_url: str | None = None
    exchange_consortium: str | None = None
    key_service_audience: str = KEY_SERVICE_AUDIENCE


def service_account_token(
    api: client.ApiClient,
    name: str,
    namespace: str = SYSTEM_NAMESPACE,
    audiences: list[str] | None = None,
    seconds: int = TOKEN_SECONDS,
) -> str:
    """A bound token for a service account, through the TokenRequest API (default audience: the API server)."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=audiences or [], expiration_seconds=seconds)
    )
    response = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
    if response.status is None or not response.status.token:
        raise RuntimeError(f"the API server issued no token for {namespace}/{name}")
    return str(response.status.token)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
        return bool(response.status == 200)


def start_platform(cluster: LocalCluster, python: str = sys.executable) -> PlatformInfo:
    """Install MedCloud into the running local cluster and start the key service, the operator and the API."""
    state = cluster.state
    assert state is not None, "start the cluster first"
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        cluster.progress("installing CRDs and RBAC ...")
        install_crds(api)
        cluster.kubectl("create", "namespace", SYSTEM_NAMESPACE, check=False)
        cluster.kubectl("apply", "-f", str(deploy_dir()))
        tokens = {sa: service_account_token(api, sa) for sa in (*SERVICE_ACCOUNTS, CITY_ADMIN)}
    finally:
        api.close()

    kubeconfigs = {
        sa: write_kubeconfig(
            cluster.state_dir / f"kubeconfig-{sa}",
            build_token_kubeconfig(
                state.server, cluster.ca.paths.cert, f"system:serviceaccount:{SYSTEM_NAMESPACE}:{sa}", token
            ),
        )
        for sa, token in tokens.items()
        if sa != CITY_ADMIN
    }
    base_env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONUNBUFFERED": "1"}
    metrics_port, probe_port, api_port, keys_port = free_port(), free_port(), free_port(), free_port()
    state.ports.update(
        {"operator-metrics": metrics_port, "operator-probe": probe_port, "api": api_port, "keyservice": keys_port}
    )

    # The key service first: the operator advertises its URL in the stores' Secrets.
    key_service_url = f"http://127.0.0.1:{keys_port}"
    keys_env = {
        **base_env,
        "MEDCLOUD_KEYSERVICE_KUBECONFIG": str(kubeconfigs["medcloud-keyservice"]),
        "MEDCLOUD_KEYSERVICE_OPERATOR_NAMESPACE": SYSTEM_NAMESPACE,
        "MEDCLOUD_KEYSERVICE_AUDIENCE": KEY_SERVICE_AUDIENCE,
        "MEDCLOUD_KEYSERVICE_HOST": "127.0.0.1",
        "MEDCLOUD_KEYSERVICE_PORT": str(keys_port),
    }
    keys = cluster.spawn("keyservice", [python, "-m", "medcloud_keyservice"], (keys_port,), env=keys_env)
    # /readyz answers once the cluster grants the service's RBAC (reviews, Secrets), which takes a moment to apply.
    keys.wait_ready(lambda: _http_ok(f"{key_service_url}/readyz"), 60)

    operator_env = {
        **base_env,
        "KUBECONFIG": str(kubeconfigs["medcloud-operator"]),
        "MEDCLOUD_OPERATOR_NAMESPACE": SYSTEM_NAMESPACE,
        "MEDCLOUD_METRICS_PORT": str(metrics_port),
        "MEDCLOUD_METRICS_ADDRESS": "127.0.0.1",
        "MEDCLOUD_PROBE_PORT": str(probe_port),
        "MEDCLOUD_STANDALONE": "true",
        "MEDCLOUD_KEY_SERVICE_URL": key_service_url,
        # The operator provisions each Consortium's exchange too (its pod runs on KWOK here; the local
        # process of localcluster/exchange.py serves): a development audit trail is locked for a day only.
        "MEDCLOUD_EXCHANGE_AUDIT_RETENTION_DAYS": "1",
        **storage_env(cluster),
        **broker_env(cluster),
        **presence_env(cluster),
    }
    operator = cluster.spawn(
        "operator",
        [python, "-m", "medcloud_operator", "--standalone", "--liveness", f"http://127.0.0.1:{probe_port}/healthz"],
        (metrics_port, probe_port),
        env=operator_env,
    )
    operator.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{probe_port}/healthz"), 60)

    api_env = {
        **base_env,
        "MEDCLOUD_API_KUBECONFIG": str(kubeconfigs["medcloud-api"]),
        "MEDCLOUD_API_HOST": "127.0.0.1",
        "MEDCLOUD_API_PORT": str(api_port),
    }
    if state.minio is not None:
        # The analytics bucket and its two users: the API reads the dashboard with the reader's key alone;
        # the writer's key is left for `medcloud analytics` in a file only this user reads (docs/analytics.md).
        analytics = make_analytics_bucket(state.minio)
        api_env.update(analytics.dashboard_env())
        env_file = cluster.state_dir / "analytics.env"
        env_file.write_text("".join(f"export {k}={v}\n" for k, v in analytics.writer_env().items()))
        env_file.chmod(0o600)
        state.extra["analytics"] = {"bucket": analytics.bucket, "envFile": str(env_file)}
    api_proc = cluster.spawn("api", [python, "-m", "medcloud_cli.main", "api"], (api_port,), env=api_env)
    api_proc.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{api_port}/readyz"), 60)
    exchange_url = consortium = None
    if state.postgres is not None and state.minio is not None:
        consortium = example_consortium(deploy_dir().parent)
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        try:
            exchange_url = start_exchange(
                cluster,
                consortium,
                SYSTEM_NAMESPACE,
                key_service_url,
                lambda account, audiences: service_account_token(api, account, audiences=audiences),
                python,
            )
        finally:
            api.close()
    # Prometheus last, with the chart's alert rules: it scrapes what runs now.
    _, prometheus_url = prometheus.start_prometheus(
        cluster,
        {
            prometheus.OPERATOR_JOB: f"127.0.0.1:{metrics_port}",
            prometheus.API_JOB: f"127.0.0.1:{api_port}",
            prometheus.KEYSERVICE_JOB: f"127.0.0.1:{keys_port}",
            **({prometheus.EXCHANGE_JOB: exchange_url.removeprefix("http://")} if exchange_url else {}),
        },
    )
    info = PlatformInfo(
        api_url=f"http://127.0.0.1:{api_port}",
        city_admin_token=tokens[CITY_ADMIN],
        operator_metrics=f"http://127.0.0.1:{metrics_port}/metrics",
        key_service_url=key_service_url,
        exchange_url=exchange_url,
        exchange_consortium=consortium,
        prometheus_url=prometheus_url,
    )
    # For `dev status`: where each service answers (no tokens: state.json is not the place for them).
    state.extra["urls"] = {
        "api": info.api_url,
        "keyservice": info.key_service_url,
        "operator-metrics": info.operator_metrics,
        **({"exchange": info.exchange_url} if info.exchange_url else {}),
        "prometheus": info.prometheus_url,
    }
    state.extra["keyServiceAudience"] = info.key_service_audience
    cluster.save_state()
    return info


def broker_env(cluster: LocalCluster) -> dict[str, str]:
    """The CA the broker checks client certificates with: the operator issues each gateway's broker certificate."""
    state = cluster.state
    if state is None or state.broker is None or not state.broker.ca_key_file:
        return {}
    return {
        "MEDCLOUD_BROKER_CLIENT_CA_FILE": state.broker.ca_file,
        "MEDCLOUD_BROKER_CLIENT_CA_KEY_FILE": state.broker.ca_key_file,
    }


def presence_env(cluster: LocalCluster) -> dict[str, str]:
    """With a real node: the operator may ask gateway pods (on the node's pod range) which devices they saw."""
    if cluster.node is None:
        return {}
    return {"MEDCLOUD_GATEWAY_PRESENCE_CIDRS": json.dumps([netsetup.POD_CIDR])}


def storage_env(cluster: LocalCluster) -> dict[str, str]:
    """Where the operator finds the record storage (MinIO) and its root credentials.

    ``MEDCLOUD_MINIO_*`` are what the operator's StorageSettings read (buckets,
    users, the stores' credentials Secrets); ``MEDCLOUD_STORAGE_*`` are the
    OperatorSettings that let tenants reach that endpoint through their network
    policies. With a real node, pods reach MinIO and the broker through the
    platform Services (platformservices.operator_env).
    """
    state = cluster.state
    if state is None or state.minio is None:
        return {}
    scheme = "https" if state.minio.secure else "http"
    return {
        "MEDCLOUD_MINIO_ENDPOINT": f"{scheme}://{state.minio.endpoint}",
        "MEDCLOUD_MINIO_ACCESS_KEY": state.minio.access_key,
        "MEDCLOUD_MINIO_SECRET_KEY": state.minio.secret_key,
        "MEDCLOUD_STORAGE_CIDRS": json.dumps(["127.0.0.1/32"]),
        "MEDCLOUD_STORAGE_PORT": str(state.minio.port),
        # With a real node: MinIO and the broker as pods reach them, through the platform Services.
        **platformservices.operator_env(state),
    }
