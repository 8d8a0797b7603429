"""What a DeviceGateway becomes: its identity, a Deployment of MedCloud's image and a Service per protocol.

The pod runs ``medcloud gateway`` as the gateway's own ServiceAccount
``gw-<name>``, bound in the namespace to the ClusterRole that grants
``get`` on ``recordstores/keys`` (deploy/gateway-rbac.yaml); a token of that
account with the key service's audience is projected into the pod, and
nothing else of the API is reachable with it (no API-audience token is
mounted).

Pure functions: the gateway as read from the API server, its parsed spec and
what the handler found (the RecordStore's credentials Secret, the tenant's
LimitRange) in; manifests and the next status out.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Unpack

from medcloud.kube.client import Manifest
from medcloud.models import DeviceCounts, DeviceGatewaySpec, DeviceGatewayStatus, DeviceProtocol
from medcloud.tenancy import deviceca, devicecrl, labels
from medcloud.tenancy import gateway as gateway_env
from medcloud_operator.builders import workload
from medcloud_operator.builders.workload import Ceiling, Dependency, Findings
from medcloud_operator.catalog import gateway_image
from medcloud_operator.settings import WorkloadSettings

COMPONENT = "devicegateway"
"""``app.kubernetes.io/component`` of a gateway's children (and its pods)."""
NAME = "medcloud-gateway"
"""``app.kubernetes.io/name`` of a gateway's children."""
PREFIX = "gw-"
CONTAINER = "gateway"
HEALTH_PORT = 8080
HEALTH_PORT_NAME = "health"
TRUST_VOLUME = "device-trust"
TRUST_DIR = "/etc/medcloud/device-trust"
"""Where the hospital's device CA certificate and CRL are mounted (a whole Secret volume, no subPath, so the
kubelet's atomic swap on a Secret change reaches the files the gateway re-reads)."""
SERVING_VOLUME = "serving-tls"
SERVING_DIR = "/etc/medcloud/serving-tls"
BROKER_VOLUME = "broker-tls"
BROKER_DIR = "/etc/medcloud/broker-tls"
"""The gateway's MQTT client certificate and key, and the CA of the broker's certificate (Secret gw-<name>-broker)."""
CERTIFICATES_ANNOTATION = "medcloud.io/certificates"
"""On the pod template: a digest of the serving and broker client certificates in force, so a renewal rolls the
pods (each starts with the new files) instead of leaving them on a certificate about to expire."""
COMMAND_ARGS = ["gateway"]
"""MedCloud's one image runs the command its args name (its entrypoint is ``medcloud``)."""
TOKEN_VOLUME = "keyservice-token"  # noqa: S105 - a volume name
TOKEN_SECONDS = 3600
"""Lifetime of the projected token; the kubelet renews it at 80%, and the gateway reads the file per request."""
RBAC = "rbac.authorization.k8s.io"


@dataclass(frozen=True)
class Listener:
    """How devices reach the gateway over one protocol."""

    port: int
    port_name: str
    scheme: str


LISTENERS: dict[DeviceProtocol, Listener] = {
    # MQTT over TLS, the IANA port for secure MQTT; devices present client certificates.
    DeviceProtocol.MQTT: Listener(8883, "mqtt", "mqtts"),
    DeviceProtocol.HTTPS: Listener(8443, "https", "https"),
    # HL7 v2 over MLLP, the IANA port for HL7 v2.
    DeviceProtocol.HL7V2: Listener(2575, "mllp", "mllp"),
}


def child_name(gateway: str) -> str:
    """Name of the gateway's Deployment and Service (a DNS-1035 label)."""
    return workload.child_name(PREFIX, gateway)


def endpoints(gateway: str, namespace: str, spec: DeviceGatewaySpec) -> dict[str, str]:
    """Where devices connect, by protocol: URLs on the Service's DNS name."""
    host = workload.service_host(child_name(gateway), namespace)
    return {
        protocol.value: f"{LISTENERS[protocol].scheme}://{host}:{LISTENERS[protocol].port}"
        for protocol in sorted(spec.protocols)
    }


def _protocols(spec: DeviceGatewaySpec) -> list[DeviceProtocol]:
    # The spec's order is the user's; sorting keeps the manifests stable when it is reordered.
    return sorted(spec.protocols)


def broker_tls(spec: DeviceGatewaySpec, settings: WorkloadSettings) -> bool:
    """Whether the gateway gets a broker client certificate: it speaks MQTT and the operator knows the broker's CA."""
    return DeviceProtocol.MQTT in spec.protocols and settings.broker_client_ca_file is not None


def broker_identity(gateway: str, namespace: str) -> str:
    """The gateway's name at the broker: its client certificate's CN (the broker's user) and its share group."""
    return f"{child_name(gateway)}.{namespace}"


def certificates_digest(certificates: Sequence[bytes]) -> str:
    """A short digest of the certificates a pod starts with (public certificates only, never keys)."""
    digest = hashlib.sha256()
    for cert in certificates:
        digest.update(hashlib.sha256(cert).digest())
    return digest.hexdigest()[:16]


def _env(
    gateway: str, namespace: str, hospital: str, spec: DeviceGatewaySpec, settings: WorkloadSettings
) -> list[Manifest]:
    env = [
        {"name": gateway_env.HOSPITAL, "value": hospital},
        {"name": gateway_env.NAMESPACE, "value": namespace},
        {"name": gateway_env.RECORD_STORE, "value": spec.record_store},
        {"name": gateway_env.PROTOCOLS, "value": ",".join(p.value for p in _protocols(spec))},
        {"name": gateway_env.DEVICE_CLASSES, "value": ",".join(sorted(c.value for c in spec.device_classes))},
        {"name": gateway_env.HEALTH_PORT, "value": str(HEALTH_PORT)},
        {"name": gateway_env.KEY_SERVICE_TOKEN_FILE, "value": gateway_env.DEFAULT_KEY_SERVICE_TOKEN_FILE},
    ]
    if settings.broker_host is not None:
        env.append({"name": gateway_env.BROKER_HOST, "value": settings.broker_host})
    if settings.broker_port is not None:
        env.append({"name": gateway_env.BROKER_PORT, "value": str(settings.broker_port)})
    if broker_tls(spec, settings):
        env += [
            {"name": gateway_env.MQTT_CA_FILE, "value": f"{BROKER_DIR}/{deviceca.CA_CERT_KEY}"},
            {"name": gateway_env.MQTT_CERT_FILE, "value": f"{BROKER_DIR}/{deviceca.TLS_CERT_KEY}"},
            {"name": gateway_env.MQTT_KEY_FILE, "value": f"{BROKER_DIR}/{deviceca.TLS_KEY_KEY}"},
        ]
    if DeviceProtocol.MQTT in spec.protocols:
        # The broker is shared by every hospital: the group is this gateway's alone, so its replicas split its
        # stream and never another gateway's.
        env.append({"name": gateway_env.MQTT_SHARE_GROUP, "value": broker_identity(gateway, namespace)})
    for protocol in _protocols(spec):
        env.append({"name": gateway_env.PORT[protocol], "value": str(LISTENERS[protocol].port)})
    env += [
        {"name": gateway_env.DEVICE_CA_FILE, "value": f"{TRUST_DIR}/{deviceca.CA_CERT_KEY}"},
        {"name": gateway_env.DEVICE_CRL_FILE, "value": f"{TRUST_DIR}/{devicecrl.CRL_KEY}"},
        {"name": gateway_env.TLS_CERT_FILE, "value": f"{SERVING_DIR}/{deviceca.TLS_CERT_KEY}"},
        {"name": gateway_env.TLS_KEY_FILE, "value": f"{SERVING_DIR}/{deviceca.TLS_KEY_KEY}"},
    ]
    if DeviceProtocol.HL7V2 in spec.protocols:
        env.append({"name": gateway_env.HL7V2_TLS, "value": "true"})
    if spec.code_mappings:
        # JSON, in the spec's order: the gateway reads it into its vocabulary (a code listed twice: the last wins).
        mappings = [m.model_dump(mode="json", by_alias=True) for m in spec.code_mappings]
        env.append({"name": gateway_env.CODE_MAPPINGS, "value": json.dumps(mappings, separators=(",", ":"))})
    return env


def build_deployment(
    gateway: Manifest,
    spec: DeviceGatewaySpec,
    credentials_secret: str,
    ceiling: Ceiling,
    settings: WorkloadSettings,
    certificates: Sequence[bytes] = (),
) -> Manifest:
    """The gateway's pods: restricted, within the LimitRange, with the RecordStore's credentials in their env.

    ``certificates`` are the serving and broker client certificates in force:
    their digest on the pod template rolls the pods when the operator renews one.

    The credentials Secret carries the bucket, endpoint and the store's own
    access keys (COSI and ObjectBucketClaim names both); the gateway writes
    every normalised reading there, encrypted.
    """
    meta = gateway["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    hospital = workload.hospital_of(namespace)
    token_path = gateway_env.DEFAULT_KEY_SERVICE_TOKEN_FILE
    resources = workload.cap_cpu_request(
        workload.checked_resources(spec.resources.requests, spec.resources.limits, ceiling, "spec.resources"),
        settings.max_cpu_request,
    )
    child_labels = workload.child_labels(hospital, COMPONENT, name, NAME, settings.gateway_version)
    ports = [{"name": HEALTH_PORT_NAME, "containerPort": HEALTH_PORT, "protocol": "TCP"}] + [
        {"name": LISTENERS[p].port_name, "containerPort": LISTENERS[p].port, "protocol": "TCP"}
        for p in _protocols(spec)
    ]
    container = {
        "name": CONTAINER,
        "image": gateway_image(settings),
        "imagePullPolicy": settings.image_pull_policy,
        "args": COMMAND_ARGS,
        "env": _env(name, namespace, hospital, spec, settings),
        "envFrom": [{"secretRef": {"name": credentials_secret}}],
        "ports": ports,
        "resources": resources,
        "securityContext": workload.container_security_context(),
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": str(PurePosixPath(token_path).parent), "readOnly": True},
            workload.tmp_mount(),
            {"name": TRUST_VOLUME, "mountPath": TRUST_DIR, "readOnly": True},
            {"name": SERVING_VOLUME, "mountPath": SERVING_DIR, "readOnly": True},
        ],
        # Ready only once every enabled listener takes readings (MQTT subscribed, MLLP and HTTPS listening):
        # /readyz answers 503 until then; /healthz is whether the process answers at all.
        **workload.http_probes(HEALTH_PORT_NAME, "/healthz", ready_path="/readyz"),
    }
    volumes = [
        _token_volume(PurePosixPath(token_path).name, settings),
        {"name": TRUST_VOLUME, "secret": {"secretName": deviceca.TRUST_SECRET, "defaultMode": 0o444}},
        {
            "name": SERVING_VOLUME,
            "secret": {"secretName": deviceca.serving_secret_name(child_name(name)), "defaultMode": 0o440},
        },
    ]
    if broker_tls(spec, settings):
        container["volumeMounts"].append({"name": BROKER_VOLUME, "mountPath": BROKER_DIR, "readOnly": True})
        volumes.append(
            {
                "name": BROKER_VOLUME,
                "secret": {"secretName": deviceca.broker_secret_name(child_name(name)), "defaultMode": 0o440},
            }
        )
    pod_spec = workload.pod_spec_base([container], volumes)
    pod_spec["serviceAccountName"] = child_name(name)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": child_name(name),
            "namespace": namespace,
            "labels": child_labels,
            "ownerReferences": [workload.owner_reference(gateway)],
        },
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": workload.selector_labels(COMPONENT, name)},
            "template": {
                "metadata": {
                    "labels": child_labels,
                    **(
                        {"annotations": {CERTIFICATES_ANNOTATION: certificates_digest(certificates)}}
                        if certificates
                        else {}
                    ),
                },
                "spec": pod_spec,
            },
        },
    }


def _token_volume(file: str, settings: WorkloadSettings) -> Manifest:
    """The gateway account's token for the key service only: the API server refuses it (another audience)."""
    token = {"audience": settings.key_service_audience, "expirationSeconds": TOKEN_SECONDS, "path": file}
    return {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}}


def _identity_meta(gateway: Manifest, settings: WorkloadSettings) -> Manifest:
    meta = gateway["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    return {
        "name": child_name(name),
        "namespace": namespace,
        "labels": workload.child_labels(
            workload.hospital_of(namespace), COMPONENT, name, NAME, settings.gateway_version
        ),
        "ownerReferences": [workload.owner_reference(gateway)],
    }


def build_service_account(gateway: Manifest, settings: WorkloadSettings) -> Manifest:
    """The gateway's own identity; no API token is mounted from it (the pod projects one for the key service)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _identity_meta(gateway, settings),
        "automountServiceAccountToken": False,
    }


def build_keys_binding(gateway: Manifest, settings: WorkloadSettings) -> Manifest:
    """``get`` on ``recordstores/keys`` in the gateway's namespace: the key service's question, answered by RBAC.

    A RoleBinding to a shared ClusterRole, since the operator may bind only
    roles it names in advance: the grant covers the RecordStores of the
    gateway's own hospital, never another's.
    """
    meta = _identity_meta(gateway, settings)
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "RoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": settings.gateway_keys_cluster_role},
        "subjects": [{"kind": "ServiceAccount", "name": meta["name"], "namespace": meta["namespace"]}],
    }


def build_service(gateway: Manifest, spec: DeviceGatewaySpec, settings: WorkloadSettings) -> Manifest:
    """One port per accepted protocol, on the Service name the endpoints in status use."""
    meta = gateway["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    hospital = workload.hospital_of(namespace)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": child_name(name),
            "namespace": namespace,
            "labels": workload.child_labels(hospital, COMPONENT, name, NAME, settings.gateway_version),
            "ownerReferences": [workload.owner_reference(gateway)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": workload.selector_labels(COMPONENT, name),
            "ports": [
                {
                    "name": LISTENERS[p].port_name,
                    "port": LISTENERS[p].port,
                    "targetPort": LISTENERS[p].port_name,
                    "protocol": "TCP",
                }
                for p in _protocols(spec)
            ],
        },
    }


def build_device_ingress(gateway: Manifest, spec: DeviceGatewaySpec, settings: WorkloadSettings) -> Manifest:
    """Devices may open the gateway's listener ports from anywhere; the operator's pods its health port; nothing
    else reaches its pods.

    Devices sit on hospital and home networks, outside every namespace, so the
    tenancy's default deny would shut them out. Each listener takes only a
    device certificate of the hospital's CA that is not in its CRL (the MQTT
    port is the broker's side: the gateway listens on none but those below).
    The health port stays closed to other namespaces (the kubelet's probes come
    from the node) but for the operator's own pods, when it runs as pods: it
    asks each replica there which devices it saw (:func:`presence_ingress`).
    """
    meta = _identity_meta(gateway, settings)
    ports = [{"protocol": "TCP", "port": LISTENERS[p].port} for p in _protocols(spec) if p is not DeviceProtocol.MQTT]
    rules: list[Manifest] = [{"ports": ports}] if ports else []
    if (presence := presence_ingress(settings)) is not None:
        rules.append(presence)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {
            "podSelector": {"matchLabels": workload.selector_labels(COMPONENT, gateway["metadata"]["name"])},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def presence_ingress(settings: WorkloadSettings) -> Manifest | None:
    """The rule admitting the operator's pods (its namespace and its labels, both) to the health port alone.

    None when the operator does not run as pods (no namespace set): then no rule, rather than one whose empty
    peer list would mean everyone. The namespace is matched by ``kubernetes.io/metadata.name``, which the API
    server sets and no tenant can forge.
    """
    namespace = settings.gateway_presence_from_namespace
    if namespace is None:
        return None
    return {
        "from": [
            {
                "namespaceSelector": {"matchLabels": {labels.NAMESPACE_NAME: namespace}},
                "podSelector": {"matchLabels": dict(settings.gateway_presence_from_pod_labels)},
            }
        ],
        "ports": [{"protocol": "TCP", "port": HEALTH_PORT}],
    }


def build_gateway(
    gateway: Manifest,
    spec: DeviceGatewaySpec,
    credentials_secret: str,
    ceiling: Ceiling,
    settings: WorkloadSettings,
    certificates: Sequence[bytes] = (),
) -> list[Manifest]:
    """Every child of the gateway, in the order they are applied (the identity before the pods that use it)."""
    return [
        build_service_account(gateway, settings),
        build_keys_binding(gateway, settings),
        build_device_ingress(gateway, spec, settings),
        build_deployment(gateway, spec, credentials_secret, ceiling, settings, certificates),
        build_service(gateway, spec, settings),
    ]


def serving_names(gateway: str, namespace: str) -> list[str]:
    """The DNS names devices reach the gateway by: its Service's, short and fully qualified."""
    child = child_name(gateway)
    return [workload.service_host(child, namespace), f"{workload.service_host(child, namespace)}.cluster.local"]


def build_serving_secret(gateway: Manifest, serving: deviceca.TenantCA, settings: WorkloadSettings) -> Manifest:
    """The gateway's serving certificate and key (issued by the tenant CA), owned by the gateway."""
    name = gateway["metadata"]["name"]
    return _tls_secret(gateway, deviceca.serving_secret_name(child_name(name)), serving, {}, settings)


def build_broker_secret(
    gateway: Manifest, client: deviceca.TenantCA, broker_ca_pem: bytes, settings: WorkloadSettings
) -> Manifest:
    """The gateway's broker client certificate and key, with the broker's CA certificate; owned by the gateway."""
    name = gateway["metadata"]["name"]
    secret = deviceca.broker_secret_name(child_name(name))
    return _tls_secret(gateway, secret, client, {deviceca.CA_CERT_KEY: broker_ca_pem}, settings)


def _tls_secret(
    gateway: Manifest, secret: str, pair: deviceca.TenantCA, extra: dict[str, bytes], settings: WorkloadSettings
) -> Manifest:
    meta = gateway["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    hospital = workload.hospital_of(namespace)
    data = {deviceca.TLS_CERT_KEY: pair.cert_pem, deviceca.TLS_KEY_KEY: pair.key_pem, **extra}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": secret,
            "namespace": namespace,
            "labels": workload.child_labels(hospital, COMPONENT, name, NAME, settings.gateway_version),
            "ownerReferences": [workload.owner_reference(gateway)],
        },
        "data": {key: base64.b64encode(value).decode() for key, value in sorted(data.items())},
    }


def dependencies(spec: DeviceGatewaySpec, record_store: Manifest | None) -> list[Dependency]:
    return [Dependency("RecordStore", spec.record_store, "spec.recordStore", record_store)]


def next_status(
    previous: DeviceGatewayStatus,
    *,
    endpoints: dict[str, str] | None,
    devices: DeviceCounts | None = None,
    **findings: Unpack[Findings],
) -> DeviceGatewayStatus:
    """The gateway's status: conditions and phase, where devices connect, and device counts (from its Devices)."""
    shown = endpoints if endpoints is not None else dict(previous.endpoints)
    counted = devices if devices is not None else (previous.devices or DeviceCounts())
    if counted.active is None and previous.devices is not None:
        # active is the presence timer's (handlers.devicegateway.gateway_presence): a reconcile keeps it.
        counted = counted.model_copy(update={"active": previous.devices.active})
    ready_message = f"Accepting readings on {', '.join(sorted(shown)) or 'no protocol'}."
    outcome = workload.next_outcome(previous, ready_message=ready_message, **findings)
    return DeviceGatewayStatus(
        phase=outcome.phase,
        observed_generation=findings["generation"],
        conditions=outcome.conditions,
        endpoints=shown,
        devices=counted,
    )
