"""MedCloud itself on the local cluster: CRDs, RBAC, the operator and the control API.

`medcloud dev up` runs this after the servers are up. The operator and the API
run as local processes, each with a service-account token bound by the same
least-privilege RBAC manifests a real install uses (`deploy/*.yaml`), so a
missing permission shows up here, not first in production.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

from medcloud.kube.crds import install_crds
from medcloud.localcluster.cluster import LocalCluster
from medcloud.localcluster.kubeconfig import build_token_kubeconfig, write_kubeconfig
from medcloud.localcluster.process import free_port

SYSTEM_NAMESPACE = "medcloud-system"
# One day: a dev session; `dev up` again issues fresh tokens.
TOKEN_SECONDS = 86400


def deploy_dir() -> Path:
    """The repository's deploy/ folder (the RBAC manifests a real install applies too)."""
    path = Path(__file__).resolve().parents[2] / "deploy"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: `medcloud dev up` runs from a source checkout")
    return path


@dataclass
class PlatformInfo:
    api_url: str
    city_admin_token: str
    operator_metrics: str


def service_account_token(api: client.ApiClient, name: str, namespace: str = SYSTEM_NAMESPACE) -> str:
    """A bound token for a service account, through the TokenRequest API."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
    )
    response = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
    if response.status is None or not response.status.token:
        raise RuntimeError(f"the API server issued no token for {namespace}/{name}")
    return str(response.status.token)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
        return bool(response.status == 200)


def start_platform(cluster: LocalCluster, python: str = sys.executable) -> PlatformInfo:
    """Install MedCloud into the running local cluster and start the operator and the API."""
    state = cluster.state
    assert state is not None, "start the cluster first"
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        cluster.progress("installing CRDs and RBAC ...")
        install_crds(api)
        cluster.kubectl("create", "namespace", SYSTEM_NAMESPACE, check=False)
        cluster.kubectl("apply", "-f", str(deploy_dir()))
        tokens = {sa: service_account_token(api, sa) for sa in ("medcloud-operator", "medcloud-api", "city-admin")}
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
        if sa != "city-admin"
    }
    base_env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONUNBUFFERED": "1"}
    metrics_port, probe_port, api_port = free_port(), free_port(), free_port()
    state.ports.update({"operator-metrics": metrics_port, "operator-probe": probe_port, "api": api_port})

    operator_env = {
        **base_env,
        "KUBECONFIG": str(kubeconfigs["medcloud-operator"]),
        "MEDCLOUD_OPERATOR_NAMESPACE": SYSTEM_NAMESPACE,
        "MEDCLOUD_METRICS_PORT": str(metrics_port),
        "MEDCLOUD_METRICS_ADDRESS": "127.0.0.1",
        "MEDCLOUD_PROBE_PORT": str(probe_port),
        "MEDCLOUD_STANDALONE": "true",
        **storage_env(cluster),
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
    api_proc = cluster.spawn("api", [python, "-m", "medcloud.cli", "api"], (api_port,), env=api_env)
    api_proc.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{api_port}/readyz"), 60)
    cluster.save_state()
    return PlatformInfo(
        api_url=f"http://127.0.0.1:{api_port}",
        city_admin_token=tokens["city-admin"],
        operator_metrics=f"http://127.0.0.1:{metrics_port}/metrics",
    )


def storage_env(cluster: LocalCluster) -> dict[str, str]:
    """Where the operator finds the record storage (MinIO) and its root credentials."""
    state = cluster.state
    if state is None or state.minio is None:
        return {}
    return {
        "MEDCLOUD_STORAGE_ENDPOINT": state.minio.endpoint,
        "MEDCLOUD_STORAGE_ACCESS_KEY": state.minio.access_key,
        "MEDCLOUD_STORAGE_SECRET_KEY": state.minio.secret_key,
        "MEDCLOUD_STORAGE_SECURE": "false",
        "MEDCLOUD_STORAGE_CIDRS": json.dumps(["127.0.0.1/32"]),
        "MEDCLOUD_STORAGE_PORT": str(state.minio.port),
    }
