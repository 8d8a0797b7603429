"""What a Consortium's exchange runs as: pure, from the Consortium and what the handler found (docs/exchange.md).

In the operator namespace, each labelled with its Consortium and owned by it:

- ServiceAccount ``medcloud-exchange-<consortium>`` (the identity builders/exchange.py grants);
- Secret ``<account>-blind-index``: the consortium key of the patient blind index, generated once
  by the handler and never rewritten (a new key would orphan every index entry);
- Secret ``<account>-audit``: the access and secret key of the exchange's own MinIO user, which
  may put, get and list its audit bucket and nothing else;
- Deployment ``<account>``: MedCloud's image, ``args: ["exchange"]``, restricted, the database URI
  from the Secret the chart or user provides, a projected token for the key service's audience,
  readiness on ``/readyz`` (PostgreSQL and the audit bucket answer) and liveness on ``/healthz``;
- Service ``<account>``: port 80 to the container's 8090.

:func:`judge_exchange` turns the Deployment's state into the ``ExchangeReady`` condition.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from medcloud.kube.client import Manifest
from medcloud.models import Condition, ConditionStatus, ConsortiumReason
from medcloud.models.workload import WorkloadReason
from medcloud_operator.builders import workload
from medcloud_operator.builders.exchange import COMPONENT, account_name, exchange_labels, exchange_meta
from medcloud_operator.settings import OperatorSettings
from medcloud_operator.status import Check

CONTAINER = "exchange"
PORT = 8090
PORT_NAME = "http"
SERVICE_PORT = 80
BLIND_INDEX_KEY = "key"
AUDIT_ACCESS_KEY = "accessKey"
AUDIT_SECRET_KEY = "secretKey"  # noqa: S105 - the name of a Secret's key, not a secret
TOKEN_VOLUME = "keyservice-token"  # noqa: S105 - a volume name
TOKEN_DIR = "/var/run/secrets/medcloud/keyservice"  # noqa: S105 - a path
TOKEN_SECONDS = 3600
_BUCKET_MAX = 63


@dataclass(frozen=True)
class ExchangeNames:
    """Every name derived from the Consortium's."""

    consortium: str
    namespace: str
    account: str
    blind_index_secret: str
    audit_secret: str
    audit_bucket: str
    audit_user: str
    audit_policy: str

    @classmethod
    def of(cls, consortium: str, namespace: str) -> ExchangeNames:
        account = account_name(consortium)
        bucket = f"medcloud-exchange-audit-{consortium}"
        if len(bucket) > _BUCKET_MAX:
            digest = hashlib.sha256(consortium.encode()).hexdigest()[:8]
            bucket = f"{bucket[: _BUCKET_MAX - 9].rstrip('-')}-{digest}"
        return cls(
            consortium=consortium,
            namespace=namespace,
            account=account,
            blind_index_secret=f"{account}-blind-index",
            audit_secret=f"{account}-audit",
            audit_bucket=bucket,
            audit_user=f"{bucket}-writer",
            audit_policy=f"{bucket}-append",
        )

    def endpoint(self) -> str:
        """The FHIR base URL inside the cluster (the Service)."""
        return f"http://{workload.service_host(self.account, self.namespace)}/fhir"


@dataclass(frozen=True)
class Database:
    """The connection Secret the exchange reads its PostgreSQL URI from."""

    secret: str
    key: str


def database_secret_name(template: str, consortium: str, spec_name: str | None) -> str:
    """The spec's Secret, else the operator's default with ``{consortium}`` filled in."""
    return spec_name or template.replace("{consortium}", consortium)


def audit_policy(bucket: str) -> dict[str, Any]:
    """Append-only in effect: put and get objects, list the bucket; no delete, no retention or lock changes."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject"], "Resource": [f"arn:aws:s3:::{bucket}/*"]},
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
            },
        ],
    }


def _b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


def _secret(consortium: Manifest, names: ExchangeNames, name: str, data: dict[str, str | bytes]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": exchange_meta(name, names.consortium, consortium, names.namespace),
        "data": {key: _b64(value) for key, value in data.items()},
    }


def build_blind_index_secret(consortium: Manifest, names: ExchangeNames, key: bytes) -> Manifest:
    """The consortium key, base64 as the exchange reads it (``MEDCLOUD_EXCHANGE_BLIND_INDEX_KEY``)."""
    return _secret(consortium, names, names.blind_index_secret, {BLIND_INDEX_KEY: _b64(key)})


def build_audit_secret(consortium: Manifest, names: ExchangeNames, secret_key: str) -> Manifest:
    data: dict[str, str | bytes] = {AUDIT_ACCESS_KEY: names.audit_user, AUDIT_SECRET_KEY: secret_key}
    return _secret(consortium, names, names.audit_secret, data)


def build_service_account(consortium: Manifest, names: ExchangeNames) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": exchange_meta(names.account, names.consortium, consortium, names.namespace),
        # The pod mounts its own API token; nothing else of this account is mounted anywhere.
        "automountServiceAccountToken": False,
    }


def _secret_env(name: str, secret: str, key: str) -> Manifest:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _env(
    names: ExchangeNames, database: Database, audit_address: str, audit_secure: bool, key_service_url: str
) -> list[Manifest]:
    prefix = "MEDCLOUD_EXCHANGE_"
    return [
        {"name": f"{prefix}CONSORTIUM", "value": names.consortium},
        _secret_env(f"{prefix}DATABASE_URL", database.secret, database.key),
        _secret_env(f"{prefix}BLIND_INDEX_KEY", names.blind_index_secret, BLIND_INDEX_KEY),
        {"name": f"{prefix}AUDIT_ENDPOINT", "value": audit_address},
        {"name": f"{prefix}AUDIT_SECURE", "value": "true" if audit_secure else "false"},
        {"name": f"{prefix}AUDIT_BUCKET", "value": names.audit_bucket},
        _secret_env(f"{prefix}AUDIT_ACCESS_KEY", names.audit_secret, AUDIT_ACCESS_KEY),
        _secret_env(f"{prefix}AUDIT_SECRET_KEY", names.audit_secret, AUDIT_SECRET_KEY),
        {"name": f"{prefix}KEY_SERVICE_URL", "value": key_service_url},
        {"name": f"{prefix}KEY_SERVICE_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"},
        {"name": f"{prefix}BASE_URL", "value": names.endpoint().removesuffix("/fhir")},
        {"name": f"{prefix}HOST", "value": "0.0.0.0"},  # noqa: S104 - the pod's own address
        {"name": f"{prefix}PORT", "value": str(PORT)},
    ]


def _probes() -> Manifest:
    def probe(path: str) -> Manifest:
        return {"httpGet": {"path": path, "port": PORT_NAME, "scheme": "HTTP"}}

    return {
        # /readyz asks PostgreSQL and the audit bucket: an exchange that cannot store leaves the Service.
        "readinessProbe": {**probe("/readyz"), "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        # /healthz only says the process answers: a database outage must not restart it, nor a slow start.
        "startupProbe": workload.STARTUP_PROBE | probe("/healthz"),
        "livenessProbe": {**probe("/healthz"), "periodSeconds": 20, "failureThreshold": 3},
    }


def build_deployment(
    consortium: Manifest,
    names: ExchangeNames,
    database: Database,
    settings: OperatorSettings,
    audit_address: str,
    audit_secure: bool,
    key_service_url: str,
) -> Manifest:
    pod_labels = {**exchange_labels(names.consortium), workload.NAME_LABEL: "medcloud-exchange"}
    container = {
        "name": CONTAINER,
        "image": settings.own_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["exchange"],
        "env": _env(names, database, audit_address, audit_secure, key_service_url),
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": workload.cap_cpu_request(
            {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
            settings.max_cpu_request,
        ),
        "securityContext": workload.container_security_context(),
        "volumeMounts": [workload.tmp_mount(), {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}],
        **_probes(),
    }
    token_volume = {
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": settings.key_service_audience,
                        "expirationSeconds": TOKEN_SECONDS,
                        "path": "token",
                    }
                }
            ]
        },
    }
    pod = workload.pod_spec_base([container], [token_volume])
    # Unlike the catalog apps, the exchange calls the API server (TokenReview, SubjectAccessReview).
    pod["automountServiceAccountToken"] = True
    pod["serviceAccountName"] = names.account
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": exchange_meta(names.account, names.consortium, consortium, names.namespace),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": exchange_labels(names.consortium)},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod},
        },
    }


def build_service(consortium: Manifest, names: ExchangeNames) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": exchange_meta(names.account, names.consortium, consortium, names.namespace),
        "spec": {
            "type": "ClusterIP",
            "selector": exchange_labels(names.consortium),
            "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def judge_exchange(
    deployment: Manifest | None, previous: Condition | None, *, written: bool = True, unready: str | None = None
) -> Check:
    """``ExchangeReady`` from the Deployment: its pods are ready exactly when ``/readyz`` passes.

    ``unready``: what the exchange itself answered the operator's readiness question
    (exchangeprobe.py), when it did not pass; it overrides pods that report ready (KWOK nodes
    report every pod ready, and a kubelet's probe result reaches the Deployment only later).

    Once it has served, pods that stop being ready mean its readiness fails (PostgreSQL or MinIO
    unreachable): Degraded, and Ready again on its own when they answer (the Deployment's status
    change reconciles the Consortium). ``written``: this reconcile wrote the Deployment; when
    someone else's change has not been looked at by its controller yet, the previous verdict stands.
    """
    if deployment is None:
        return Check(
            ConditionStatus.FALSE, ConsortiumReason.EXCHANGE_STARTING, "The exchange's Deployment is being created."
        )
    rollout = workload.judge_rollout(deployment, written=written)
    if rollout is None:
        if previous is not None:
            return Check(previous.status, previous.reason, previous.message)
        rollout = workload.judge_rollout(deployment, written=True)
        assert rollout is not None  # written=True always gives a verdict
    served = previous is not None and previous.reason in (
        ConsortiumReason.EXCHANGE_SERVING,
        ConsortiumReason.EXCHANGE_UNAVAILABLE,
    )
    if rollout.ok and unready is not None:
        reason = ConsortiumReason.EXCHANGE_UNAVAILABLE if served else ConsortiumReason.EXCHANGE_STARTING
        verb = "fails" if served else "does not pass yet"
        return Check(ConditionStatus.FALSE, reason, f"The exchange {verb} its readiness check: {unready}")
    if rollout.ok:
        return Check(ConditionStatus.TRUE, ConsortiumReason.EXCHANGE_SERVING, f"The exchange serves: {rollout.message}")
    if served and (rollout.reason != WorkloadReason.ROLLING_OUT or _pods_unready(deployment)):
        return Check(
            ConditionStatus.FALSE,
            ConsortiumReason.EXCHANGE_UNAVAILABLE,
            f"The exchange fails its readiness check (/readyz: PostgreSQL or the audit bucket unreachable): "
            f"{rollout.message}",
        )
    return Check(
        ConditionStatus.FALSE, ConsortiumReason.EXCHANGE_STARTING, f"The exchange is starting: {rollout.message}"
    )


def _pods_unready(deployment: Manifest) -> bool:
    """Every pod is of the current template, yet fewer are ready than wanted: readiness fails, not a rollout."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    replicas = int(spec.get("replicas", 1))
    current = int(status.get("observedGeneration") or 0) >= int(
        (deployment.get("metadata") or {}).get("generation") or 0
    )
    updated = int(status.get("updatedReplicas") or 0)
    return current and updated >= replicas and int(status.get("availableReplicas") or 0) < replicas


def build_exchange_server(
    consortium: Manifest,
    names: ExchangeNames,
    database: Database,
    settings: OperatorSettings,
    audit_address: str,
    audit_secure: bool,
    key_service_url: str,
) -> list[Manifest]:
    """The ServiceAccount, Deployment and Service (the Secrets are written only when absent)."""
    return [
        build_service_account(consortium, names),
        build_deployment(consortium, names, database, settings, audit_address, audit_secure, key_service_url),
        build_service(consortium, names),
    ]


__all__ = ["COMPONENT", "Database", "ExchangeNames", "build_exchange_server", "judge_exchange"]
