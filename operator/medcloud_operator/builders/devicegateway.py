"""What a DeviceGateway becomes: a Deployment of the gateway image and a Service with one port per protocol.

Pure functions: the gateway as read from the API server, its parsed spec and
what the handler found (the RecordStore's credentials Secret, the tenant's
LimitRange) in; manifests and the next status out.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Unpack

from medcloud.kube.client import Manifest
from medcloud.models import DeviceCounts, DeviceGatewaySpec, DeviceGatewayStatus, DeviceProtocol
from medcloud.tenancy import deviceca, devicecrl
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


def _env(namespace: str, hospital: str, spec: DeviceGatewaySpec) -> list[Manifest]:
    env = [
        {"name": gateway_env.HOSPITAL, "value": hospital},
        {"name": gateway_env.NAMESPACE, "value": namespace},
        {"name": gateway_env.RECORD_STORE, "value": spec.record_store},
        {"name": gateway_env.PROTOCOLS, "value": ",".join(p.value for p in _protocols(spec))},
        {"name": gateway_env.DEVICE_CLASSES, "value": ",".join(sorted(c.value for c in spec.device_classes))},
        {"name": gateway_env.HEALTH_PORT, "value": str(HEALTH_PORT)},
    ]
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
) -> Manifest:
    """The gateway's pods: restricted, within the LimitRange, with the RecordStore's credentials in their env.

    The credentials Secret carries the bucket, endpoint and the store's own
    access keys (COSI and ObjectBucketClaim names both); the gateway writes
    every normalised reading there, encrypted.
    """
    meta = gateway["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    hospital = workload.hospital_of(namespace)
    resources = workload.checked_resources(spec.resources.requests, spec.resources.limits, ceiling, "spec.resources")
    child_labels = workload.child_labels(hospital, COMPONENT, name, NAME, settings.gateway_version)
    ports = [{"name": HEALTH_PORT_NAME, "containerPort": HEALTH_PORT, "protocol": "TCP"}] + [
        {"name": LISTENERS[p].port_name, "containerPort": LISTENERS[p].port, "protocol": "TCP"}
        for p in _protocols(spec)
    ]
    container = {
        "name": CONTAINER,
        "image": gateway_image(settings),
        "imagePullPolicy": settings.image_pull_policy,
        "env": _env(namespace, hospital, spec),
        "envFrom": [{"secretRef": {"name": credentials_secret}}],
        "ports": ports,
        "resources": resources,
        "securityContext": workload.container_security_context(),
        "volumeMounts": [
            workload.tmp_mount(),
            {"name": TRUST_VOLUME, "mountPath": TRUST_DIR, "readOnly": True},
            {"name": SERVING_VOLUME, "mountPath": SERVING_DIR, "readOnly": True},
        ],
        **workload.http_probes(HEALTH_PORT_NAME, "/healthz"),
    }
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
                "metadata": {"labels": child_labels},
                "spec": workload.pod_spec_base(
                    [container],
                    [
                        {"name": TRUST_VOLUME, "secret": {"secretName": deviceca.TRUST_SECRET, "defaultMode": 0o444}},
                        {
                            "name": SERVING_VOLUME,
                            "secret": {
                                "secretName": deviceca.serving_secret_name(child_name(name)),
                                "defaultMode": 0o440,
                            },
                        },
                    ],
                ),
            },
        },
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


def build_gateway(
    gateway: Manifest,
    spec: DeviceGatewaySpec,
    credentials_secret: str,
    ceiling: Ceiling,
    settings: WorkloadSettings,
) -> list[Manifest]:
    """Every child of the gateway, in the order they are applied."""
    return [
        build_deployment(gateway, spec, credentials_secret, ceiling, settings),
        build_service(gateway, spec, settings),
    ]


def serving_names(gateway: str, namespace: str) -> list[str]:
    """The DNS names devices reach the gateway by: its Service's, short and fully qualified."""
    child = child_name(gateway)
    return [workload.service_host(child, namespace), f"{workload.service_host(child, namespace)}.cluster.local"]


def build_serving_secret(gateway: Manifest, serving: deviceca.TenantCA, settings: WorkloadSettings) -> Manifest:
    """The gateway's serving certificate and key (issued by the tenant CA), owned by the gateway."""
    meta = gateway["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    hospital = workload.hospital_of(namespace)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": deviceca.serving_secret_name(child_name(name)),
            "namespace": namespace,
            "labels": workload.child_labels(hospital, COMPONENT, name, NAME, settings.gateway_version),
            "ownerReferences": [workload.owner_reference(gateway)],
        },
        "data": {
            deviceca.TLS_CERT_KEY: base64.b64encode(serving.cert_pem).decode(),
            deviceca.TLS_KEY_KEY: base64.b64encode(serving.key_pem).decode(),
        },
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
    ready_message = f"Accepting readings on {', '.join(sorted(shown)) or 'no protocol'}."
    outcome = workload.next_outcome(previous, ready_message=ready_message, **findings)
    return DeviceGatewayStatus(
        phase=outcome.phase,
        observed_generation=findings["generation"],
        conditions=outcome.conditions,
        endpoints=shown,
        devices=devices if devices is not None else (previous.devices or DeviceCounts()),
    )
