"""What an AppInstance becomes: its config as a ConfigMap, a Deployment, a Service and, when exposed, an Ingress.

An exchange-client app (its catalog entry's ``exchange_client``) also gets its
identity at the exchange and nothing more: a ServiceAccount of its own (its
projected tokens are that account's; no API-server token is mounted), a
RoleBinding of the exchange-client ClusterRole in its own namespace (use
``consortia/exchange``), and a NetworkPolicy letting its pods reach the
exchanges' pods on their port.

Pure functions: the AppInstance as read from the API server, its parsed
spec and what the handler found (the RecordStore's credentials Secret, the
tenant's LimitRange) in; manifests and the next status out.
"""

from __future__ import annotations

from typing import Unpack

from medcloud.kube.client import Manifest
from medcloud.models import AppInstanceSpec, AppInstanceStatus
from medcloud.models.common import ComputeResources
from medcloud.tenancy import labels as tenancy_labels
from medcloud_operator.builders import devicegateway, workload
from medcloud_operator.builders.exchange import COMPONENT as EXCHANGE_COMPONENT
from medcloud_operator.builders.workload import Ceiling, Dependency, Findings
from medcloud_operator.catalog import CATALOG, app_image
from medcloud_operator.settings import WorkloadSettings

COMPONENT = "appinstance"
"""``app.kubernetes.io/component`` of an app's children (and its pods)."""
PREFIX = "app-"
CONTAINER = "app"
HTTP_PORT_NAME = "http"
SERVICE_PORT = 80
CONFIG_VOLUME = "config"
CONFIG_DIR = "/etc/medcloud/config"
"""Where the app reads ``spec.config``: one file per key (keys like ``audit.retention`` are no env names)."""
EXCHANGE_PORT = 8090
"""The exchange container's port (``medcloud exchange``'s default), which its Service targets."""
RBAC = "rbac.authorization.k8s.io"


def child_name(app: str) -> str:
    """Name of the app's ConfigMap, Deployment, Service and Ingress (a DNS-1035 label)."""
    return workload.child_name(PREFIX, app)


def _labels(app: Manifest, spec: AppInstanceSpec) -> dict[str, str]:
    meta = app["metadata"]
    return workload.child_labels(
        workload.hospital_of(meta["namespace"]), COMPONENT, meta["name"], spec.app, spec.version
    )


def _meta(app: Manifest, spec: AppInstanceSpec) -> Manifest:
    return {
        "name": child_name(app["metadata"]["name"]),
        "namespace": app["metadata"]["namespace"],
        "labels": _labels(app, spec),
        "ownerReferences": [workload.owner_reference(app)],
    }


def url(app: Manifest, spec: AppInstanceSpec) -> str:
    """Where the app is reached: its public host when exposed, else its Service inside the cluster."""
    if spec.exposure.host:
        return f"https://{spec.exposure.host}/"
    return f"http://{workload.service_host(child_name(app['metadata']['name']), app['metadata']['namespace'])}/"


def build_config_map(app: Manifest, spec: AppInstanceSpec) -> Manifest:
    """``spec.config`` as it is, one key per file under /etc/medcloud/config."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(app, spec),
        "data": dict(sorted(spec.config.items())),
    }


TOKENS_DIR = "/var/run/secrets/medcloud"
TOKENS_VOLUME = "medcloud-tokens"
TOKEN_SECONDS = 3600


def _exchange_client(exchange_url: str | None, settings: WorkloadSettings) -> tuple[list[Manifest], Manifest]:
    """What an exchange-client app gets: the exchange's URL, and projected tokens for it and the key service."""
    env = [
        {"name": "MEDCLOUD_EXCHANGE_TOKEN_FILE", "value": f"{TOKENS_DIR}/exchange-token"},
        {"name": "MEDCLOUD_KEY_SERVICE_TOKEN_FILE", "value": f"{TOKENS_DIR}/keyservice-token"},
    ]
    if exchange_url is not None:
        env.insert(0, {"name": "MEDCLOUD_EXCHANGE_URL", "value": exchange_url})

    def token(audience: str, path: str) -> Manifest:
        return {"serviceAccountToken": {"audience": audience, "expirationSeconds": TOKEN_SECONDS, "path": path}}

    volume = {
        "name": TOKENS_VOLUME,
        "projected": {
            "sources": [
                token(settings.exchange_audience, "exchange-token"),
                token(settings.key_service_audience, "keyservice-token"),
            ]
        },
    }
    return env, volume


def _env(app: Manifest, spec: AppInstanceSpec) -> list[Manifest]:
    namespace = app["metadata"]["namespace"]
    env = [
        {"name": "MEDCLOUD_APP", "value": spec.app.value},
        {"name": "MEDCLOUD_APP_VERSION", "value": spec.version},
        {"name": "MEDCLOUD_HOSPITAL", "value": workload.hospital_of(namespace)},
        {"name": "MEDCLOUD_NAMESPACE", "value": namespace},
        {"name": "MEDCLOUD_APP_URL", "value": url(app, spec)},
        {"name": "MEDCLOUD_CONFIG_DIR", "value": CONFIG_DIR},
        {"name": "MEDCLOUD_HTTP_PORT", "value": str(CATALOG[spec.app].port)},
    ]
    if spec.record_store is not None:
        env.append({"name": "MEDCLOUD_RECORDSTORE", "value": spec.record_store})
    if spec.device_gateway is not None:
        gateway_service = devicegateway.child_name(spec.device_gateway)
        env += [
            {"name": "MEDCLOUD_DEVICE_GATEWAY", "value": spec.device_gateway},
            {"name": "MEDCLOUD_DEVICE_GATEWAY_HOST", "value": workload.service_host(gateway_service, namespace)},
        ]
    return env


def build_deployment(
    app: Manifest,
    spec: AppInstanceSpec,
    credentials_secret: str | None,
    ceiling: Ceiling,
    settings: WorkloadSettings,
    exchange_url: str | None = None,
) -> Manifest:
    """The app's pods: restricted, sized by the catalog within the LimitRange, wired to store and gateway.

    ``credentials_secret`` is the RecordStore's credentials Secret (None: the app uses no store);
    ``exchange_url`` the hospital's consortium exchange, for an exchange-client app (None: not known yet).
    """
    entry = CATALOG[spec.app]
    name = app["metadata"]["name"]
    resources = workload.cap_cpu_request(
        workload.fit_resources(
            ComputeResources(cpu=entry.requests.cpu, memory=entry.requests.memory),
            ComputeResources(cpu=entry.limits.cpu, memory=entry.limits.memory),
            ceiling,
        ),
        settings.max_cpu_request,
    )
    container: Manifest = {
        "name": CONTAINER,
        "image": app_image(spec.app, spec.version, settings),
        "imagePullPolicy": settings.image_pull_policy,
        "env": _env(app, spec),
        "ports": [{"name": HTTP_PORT_NAME, "containerPort": entry.port, "protocol": "TCP"}],
        "resources": resources,
        "securityContext": workload.container_security_context(),
        "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}, workload.tmp_mount()],
        **workload.http_probes(HTTP_PORT_NAME, entry.health_path),
    }
    volumes: list[Manifest] = [{"name": CONFIG_VOLUME, "configMap": {"name": child_name(name)}}]
    if entry.args:
        container["args"] = list(entry.args)
    if entry.exchange_client:
        env, volume = _exchange_client(exchange_url, settings)
        container["env"] += env
        container["volumeMounts"].append({"name": TOKENS_VOLUME, "mountPath": TOKENS_DIR, "readOnly": True})
        volumes.append(volume)
    if credentials_secret is not None:
        # The store's bucket, endpoint and its own least-privilege keys (COSI
        # and ObjectBucketClaim names both), as the RecordStore publishes them.
        container["envFrom"] = [{"secretRef": {"name": credentials_secret}}]
    labels = _labels(app, spec)
    pod = workload.pod_spec_base([container], volumes)
    if entry.exchange_client:
        pod["serviceAccountName"] = child_name(name)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(app, spec),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": workload.selector_labels(COMPONENT, name)},
            "template": {
                "metadata": {
                    "labels": labels,
                    # Apps read their config at start: a changed config must roll the pods.
                    "annotations": {workload.CONFIG_HASH_ANNOTATION: workload.config_hash(spec.config)},
                },
                "spec": pod,
            },
        },
    }


def build_service_account(app: Manifest, spec: AppInstanceSpec) -> Manifest:
    """The app's identity at the exchange; no API-server token is mounted from it."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(app, spec),
        "automountServiceAccountToken": False,
    }


def build_exchange_binding(app: Manifest, spec: AppInstanceSpec, settings: WorkloadSettings) -> Manifest:
    """The app may use its hospital's Consortium exchange (consortia/exchange), in its own namespace only."""
    meta = _meta(app, spec)
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "RoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": settings.exchange_client_cluster_role},
        "subjects": [{"kind": "ServiceAccount", "name": meta["name"], "namespace": meta["namespace"]}],
    }


STORE_KEYS_SUFFIX = "-store-keys"


def build_store_keys(app: Manifest, spec: AppInstanceSpec) -> list[Manifest]:
    """``get`` on ``recordstores/keys`` of the app's own RecordStore, and no other, for the app's account.

    A Role of its own per app (``resourceNames``: the store the spec names), so that two apps of one
    hospital never hold each other's keys; owned by the AppInstance, so it goes with the app.
    """
    assert spec.record_store is not None, "store_keys apps need a RecordStore (the CRD requires it)"
    meta = _meta(app, spec)
    account = meta["name"]
    named = {**meta, "name": f"{account}{STORE_KEYS_SUFFIX}"}
    return [
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "Role",
            "metadata": named,
            "rules": [
                {
                    "apiGroups": ["medcloud.io"],
                    "resources": ["recordstores/keys"],
                    "resourceNames": [spec.record_store],
                    "verbs": ["get"],
                }
            ],
        },
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": named,
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": named["name"]},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": meta["namespace"]}],
        },
    ]


def build_exchange_egress(app: Manifest, spec: AppInstanceSpec, settings: WorkloadSettings) -> Manifest:
    """The app's pods may reach the exchanges' pods on their port; the tenancy's policies deny the rest."""
    exchange_pods = {
        "namespaceSelector": {"matchLabels": {tenancy_labels.NAMESPACE_NAME: settings.exchange_namespace}},
        "podSelector": {"matchLabels": {tenancy_labels.COMPONENT: EXCHANGE_COMPONENT}},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(app, spec),
        "spec": {
            "podSelector": {"matchLabels": workload.selector_labels(COMPONENT, app["metadata"]["name"])},
            "policyTypes": ["Egress"],
            "egress": [{"to": [exchange_pods], "ports": [{"protocol": "TCP", "port": EXCHANGE_PORT}]}],
        },
    }


def build_service(app: Manifest, spec: AppInstanceSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(app, spec),
        "spec": {
            "type": "ClusterIP",
            "selector": workload.selector_labels(COMPONENT, app["metadata"]["name"]),
            "ports": [{"name": HTTP_PORT_NAME, "port": SERVICE_PORT, "targetPort": HTTP_PORT_NAME, "protocol": "TCP"}],
        },
    }


def build_ingress(app: Manifest, spec: AppInstanceSpec, settings: WorkloadSettings) -> Manifest | None:
    """Only for ``spec.exposure.host``: the host routed to the Service, TLS with the controller's certificate.

    The tenancy's network policies already admit the configured ingress
    controller's namespace, and nothing else from outside.
    """
    host = spec.exposure.host
    if host is None:
        return None
    ingress_spec: Manifest = {
        "rules": [
            {
                "host": host,
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {
                                "service": {
                                    "name": child_name(app["metadata"]["name"]),
                                    "port": {"name": HTTP_PORT_NAME},
                                }
                            },
                        }
                    ]
                },
            }
        ],
        "tls": [{"hosts": [host]}],
    }
    if settings.ingress_class:
        ingress_spec["ingressClassName"] = settings.ingress_class
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": _meta(app, spec), "spec": ingress_spec}


def build_app(
    app: Manifest,
    spec: AppInstanceSpec,
    credentials_secret: str | None,
    ceiling: Ceiling,
    settings: WorkloadSettings,
    exchange_url: str | None = None,
) -> list[Manifest]:
    """Every child of the app, in the order they are applied (identity and config before the pods that use them)."""
    objects = []
    if CATALOG[spec.app].exchange_client:
        objects += [
            build_service_account(app, spec),
            build_exchange_binding(app, spec, settings),
            build_exchange_egress(app, spec, settings),
        ]
        if CATALOG[spec.app].store_keys:
            objects += build_store_keys(app, spec)
    objects += [
        build_config_map(app, spec),
        build_deployment(app, spec, credentials_secret, ceiling, settings, exchange_url),
        build_service(app, spec),
    ]
    ingress = build_ingress(app, spec, settings)
    if ingress is not None:
        objects.append(ingress)
    return objects


def dependencies(spec: AppInstanceSpec, record_store: Manifest | None, gateway: Manifest | None) -> list[Dependency]:
    """The RecordStore and DeviceGateway the spec names (with what was found of each)."""
    found = []
    if spec.record_store is not None:
        found.append(Dependency("RecordStore", spec.record_store, "spec.recordStore", record_store))
    if spec.device_gateway is not None:
        found.append(Dependency("DeviceGateway", spec.device_gateway, "spec.deviceGateway", gateway))
    return found


def next_status(
    previous: AppInstanceStatus, *, url: str | None, ready_replicas: int | None, **findings: Unpack[Findings]
) -> AppInstanceStatus:
    """The app's status: conditions and phase, where it is reached, and its ready pods."""
    shown_url = url if url is not None else previous.url
    ready_message = f"Serving at {shown_url}." if shown_url else "Serving."
    outcome = workload.next_outcome(previous, ready_message=ready_message, **findings)
    return AppInstanceStatus(
        phase=outcome.phase,
        observed_generation=findings["generation"],
        conditions=outcome.conditions,
        url=shown_url,
        ready_replicas=ready_replicas if ready_replicas is not None else previous.ready_replicas,
    )
