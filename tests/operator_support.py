"""What the tests that run the operator against the real local cluster share.

Pure helpers (the JSON the API server returns, conditions and readiness,
Prometheus samples, the audit log's writes), admin access to the cluster
through the kubernetes client's generated APIs (``ClusterAdmin``, never the
operator's own code) and ``run_operator``, which runs the operator in a thread
of the test process (Kopf's KopfRunner) as the identity its kubeconfig names.
The fixtures built on them live in tests/integration/conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.request
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from medcloud.tenancy import mqtt as mqtt_names
from medcloud_cli.localcluster.cluster import MinioInfo
from medcloud_cli.localcluster.process import free_port
from medcloud_operator.main import build_registry
from medcloud_operator.settings import OperatorSettings
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION = "medcloud.io", "v1alpha1"
OPERATOR_NAMESPACE = "medcloud-system"
# The identity deploy/operator-rbac.yaml binds; a client certificate with this
# name authenticates as that service account's user name.
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:medcloud-operator"
SA_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{OPERATOR_NAMESPACE}")
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
PLURALS = {
    "Hospital": "hospitals",
    "RecordStore": "recordstores",
    "DeviceGateway": "devicegateways",
    "Device": "devices",
    "AppInstance": "appinstances",
    "Consortium": "consortia",
}

Json = dict[str, Any]


# --------------------------------------------------------------------------- API server objects


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Json | None:
    """The JSON the API server returned, or None on 404."""
    try:
        response = call(*args, _preload_content=False, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return json.loads(response.data)  # type: ignore[no-any-return]


def condition(obj: Json | None, type_: str) -> Json | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions", []):
        if cond["type"] == type_:
            return cond  # type: ignore[no-any-return]
    return None


def is_ready(obj: Json | None) -> bool:
    """Ready=True, with status.observedGeneration the object's current generation."""
    cond = condition(obj, "Ready")
    generation = (obj or {}).get("metadata", {}).get("generation")
    observed = ((obj or {}).get("status") or {}).get("observedGeneration")
    return bool(cond and cond["status"] == "True" and observed == generation)


def api_ready(obj: Json | None) -> bool:
    """Ready for the current spec, as the control API judges it: ``is_ready``, the condition and phase agreeing."""
    generation = (obj or {}).get("metadata", {}).get("generation")
    return bool(
        is_ready(obj)
        and (condition(obj, "Ready") or {}).get("observedGeneration") == generation
        and ((obj or {}).get("status") or {}).get("phase") == "Ready"
    )


def hospital_spec(name: str, **spec: Any) -> Json:
    """A Hospital's spec: a county hospital named after ``name``, with ``spec`` on top."""
    return {"displayName": f"Hospital {name}", "institutionCode": institution_code(name), "tier": "county", **spec}


def institution_code(name: str) -> str:
    """A code of its own for each test Hospital: the operator flags a code two Hospitals share."""
    return f"T{zlib.crc32(name.encode()):08X}"


@dataclass
class ClusterAdmin:
    """The cluster as its administrator sees it: the kubernetes client's generated APIs, as cluster admin."""

    api: client.ApiClient

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def net(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self.api)

    @property
    def rbac(self) -> client.RbacAuthorizationV1Api:
        return client.RbacAuthorizationV1Api(self.api)

    def get(self, kind: str, name: str, namespace: str | None = None) -> Json | None:
        """A MedCloud object (cluster-scoped without ``namespace``), or None when there is none."""
        if namespace is None:
            return raw(self.custom.get_cluster_custom_object, GROUP, VERSION, PLURALS[kind], name)
        return raw(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURALS[kind], name)

    def create(self, kind: str, name: str, spec: Json, namespace: str | None = None) -> None:
        body: Json = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
        if namespace is None:
            self.custom.create_cluster_custom_object(GROUP, VERSION, PLURALS[kind], body)
        else:
            body["metadata"]["namespace"] = namespace
            self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], body)

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        """Ask for the deletion (the operator's finalizers may hold it); no error when already gone."""
        with contextlib.suppress(ApiException):
            if namespace is None:
                self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURALS[kind], name)
            else:
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name)

    def gone(self, kind: str, name: str, namespace: str | None = None) -> bool:
        return self.get(kind, name, namespace) is None

    def events_about(self, kind: str, name: str, namespace: str = "default") -> list[Json]:
        items = raw(self.core.list_namespaced_event, namespace, field_selector=f"involvedObject.name={name}")
        return [e for e in (items or {}).get("items", []) if e["involvedObject"].get("kind") == kind]

    def has_event(self, kind: str, name: str, reason: str, namespace: str = "default", type_: str = "Normal") -> bool:
        return any(e["reason"] == reason and e["type"] == type_ for e in self.events_about(kind, name, namespace))


# --------------------------------------------------------------------------- metrics and probes


def healthz(port: int) -> bool:
    """Whether the liveness endpoint on ``port`` answers 200."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        return bool(response.status == 200)


def scrape(port: int) -> str:
    """The Prometheus text exposition served on ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the series of one metric whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if series.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


# --------------------------------------------------------------------------- audit log


def audit_lines(audit_log: Path) -> int:
    """How many entries the audit log holds: a mark to read later writes from."""
    with audit_log.open() as f:
        return sum(1 for _ in f)


def audit_writes(audit_log: Path, since_line: int, users: Collection[str] = (OPERATOR_USER,)) -> list[Json]:
    """Audit entries after ``since_line`` (writes only, by the cluster's audit policy) made by ``users``."""
    with audit_log.open() as f:
        lines = f.readlines()[since_line:]
    entries = [json.loads(line) for line in lines if line.strip()]
    return [e for e in entries if e["user"]["username"] in users and e["verb"] in WRITE_VERBS]


# --------------------------------------------------------------------------- the operator in-process


@dataclass
class RunningOperator:
    """An operator ``run_operator`` started: its metrics and liveness ports, and Kopf's runner."""

    metrics_port: int
    probe_port: int
    runner: KopfRunner

    def metrics(self) -> str:
        return scrape(self.metrics_port)


def storage_env(minio: MinioInfo) -> dict[str, str]:
    """Operator settings for RecordStores on ``minio``, which it and the tests reach on loopback."""
    return {
        "MEDCLOUD_STORAGE_CIDRS": json.dumps(["127.0.0.1/32"]),
        "MEDCLOUD_MINIO_ENDPOINT": f"http://{minio.endpoint}",
        "MEDCLOUD_MINIO_ACCESS_KEY": minio.access_key,
        "MEDCLOUD_MINIO_SECRET_KEY": minio.secret_key,
    }


@contextlib.contextmanager
def run_operator(
    kubeconfig: Path, env: Mapping[str, str], *, standalone: bool = True, timeout: float = 60
) -> Iterator[RunningOperator]:
    """The operator in a thread of this process as the identity ``kubeconfig`` names, until the block ends.

    ``env`` adds to the settings every run has: metrics on a free loopback port
    and a one-second deletion retry. The block starts once the liveness
    endpoint answers; afterwards the operator must have stopped cleanly.
    ``timeout`` bounds how long Kopf may take to stop.
    """
    metrics_port, probe_port = free_port(), free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(kubeconfig))
        patch.setenv("MEDCLOUD_METRICS_PORT", str(metrics_port))
        patch.setenv("MEDCLOUD_METRICS_ADDRESS", "127.0.0.1")
        patch.setenv("MEDCLOUD_DELETION_RETRY_SECONDS", "1")
        for key, value in env.items():
            patch.setenv(key, value)
        args = [
            "run",
            *(["--standalone"] if standalone else []),
            "--all-namespaces",
            "--verbose",
            f"--liveness=http://127.0.0.1:{probe_port}/healthz",
        ]
        # The settings are read now, from the environment above, as `medcloud operator` reads them at start.
        registry = build_registry(OperatorSettings())
        with KopfRunner(args, timeout=timeout, registry=registry) as runner:
            wait_for(partial(healthz, probe_port), "the operator's liveness endpoint", timeout=60)
            yield RunningOperator(metrics_port, probe_port, runner)
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output


def create_device_tenant(api_client: client.ApiClient, namespace: str) -> None:
    """A hospital namespace as the Hospital tenancy leaves it for devices: with the operator's Secret RoleBinding."""
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": namespace}})
    client.RbacAuthorizationV1Api(api_client).create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "medcloud-operator-tenant"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "medcloud-operator-tenant-secrets",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "medcloud-operator", "namespace": OPERATOR_NAMESPACE}],
        },
    )


def bundle_acl(api_client: client.ApiClient) -> str:
    """The ACL of the operator's broker trust ConfigMap ('' while there is none)."""
    selector = f"metadata.name={mqtt_names.TRUST_CONFIGMAP}"
    found = client.CoreV1Api(api_client).list_namespaced_config_map(OPERATOR_NAMESPACE, field_selector=selector)
    return "".join((item.data or {}).get(mqtt_names.ACL_KEY, "") for item in found.items)
