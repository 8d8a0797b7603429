"""The environment a device gateway's pod gets from the operator, and the gateway reads: each name once, here.

The operator writes these into the gateway's Deployment
(``medcloud_operator.builders.devicegateway``); the gateway reads them
(``medcloud_gateway.settings``). The store's credentials come beside them
from its credentials Secret (:mod:`medcloud.tenancy.credentials`).
"""

from __future__ import annotations

from medcloud.models import DeviceProtocol

HOSPITAL = "MEDCLOUD_HOSPITAL"
NAMESPACE = "MEDCLOUD_NAMESPACE"
RECORD_STORE = "MEDCLOUD_RECORDSTORE"
PROTOCOLS = "MEDCLOUD_GATEWAY_PROTOCOLS"
"""Comma-separated protocols to listen for (``mqtt,https,hl7v2``)."""
DEVICE_CLASSES = "MEDCLOUD_GATEWAY_DEVICE_CLASSES"
"""Comma-separated device classes to accept."""
HEALTH_PORT = "MEDCLOUD_GATEWAY_HEALTH_PORT"
CODE_MAPPINGS = "MEDCLOUD_GATEWAY_CODE_MAPPINGS"
"""JSON list of ``{system, code, mdc}`` (DeviceGateway ``spec.codeMappings``); absent when there are none."""
KEY_SERVICE_TOKEN_FILE = "MEDCLOUD_GATEWAY_KEY_SERVICE_TOKEN_FILE"  # noqa: S105 - a variable name
"""Path of the bearer token the gateway shows the key service (a projected token of its audience)."""
DEFAULT_KEY_SERVICE_TOKEN_FILE = "/var/run/secrets/medcloud/keyservice/token"  # noqa: S105 - a path
BROKER_HOST = "MEDCLOUD_GATEWAY_MQTT_BROKER_HOST"
BROKER_PORT = "MEDCLOUD_GATEWAY_MQTT_BROKER_PORT"
"""The MQTT broker devices publish to, which the gateway subscribes at."""
MQTT_CA_FILE = "MEDCLOUD_GATEWAY_MQTT_CA_FILE"
"""The CA the broker's certificate is checked against."""
MQTT_CERT_FILE = "MEDCLOUD_GATEWAY_MQTT_CERT_FILE"
MQTT_KEY_FILE = "MEDCLOUD_GATEWAY_MQTT_KEY_FILE"
"""The gateway's client certificate and key towards the broker (issued by the operator from the broker's CA)."""
MQTT_SHARE_GROUP = "MEDCLOUD_GATEWAY_MQTT_SHARE_GROUP"
"""The shared-subscription group: one per DeviceGateway, so that only its own replicas split its stream."""
PORT: dict[DeviceProtocol, str] = {p: f"MEDCLOUD_GATEWAY_{p.value.upper()}_PORT" for p in DeviceProtocol}
"""The variable naming the port each protocol's listener binds (``MEDCLOUD_GATEWAY_MQTT_PORT``, ...)."""
DEVICE_CA_FILE = "MEDCLOUD_GATEWAY_DEVICE_CA_FILE"
"""The hospital's device CA certificate (the trust Secret's ``ca.crt``, mounted)."""
DEVICE_CRL_FILE = "MEDCLOUD_GATEWAY_DEVICE_CRL_FILE"
"""The hospital's device CRL (the trust Secret's ``ca.crl``, mounted; the kubelet swaps it when the Secret changes)."""
CRL_RELOAD_SECONDS = "MEDCLOUD_GATEWAY_CRL_RELOAD_SECONDS"
TLS_CERT_FILE = "MEDCLOUD_GATEWAY_TLS_CERT_FILE"
TLS_KEY_FILE = "MEDCLOUD_GATEWAY_TLS_KEY_FILE"
HL7V2_TLS = "MEDCLOUD_GATEWAY_HL7V2_TLS"
