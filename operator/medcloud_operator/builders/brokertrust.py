"""The platform broker's trust bundle and ACL, from every hospital's trust Secret and the MQTT gateways (pure).

In: each hospital's trust Secret as read (its CA certificate and CRL), the
broker's own client CA (which issues the gateways' identities) and its CRL, the
DeviceGateways. Out: the ConfigMap :data:`medcloud.tenancy.mqtt.TRUST_CONFIGMAP`
that the broker's sync (``medcloud_gateway.brokersync``) turns into Mosquitto's
``cafile``, ``crlfile`` and ``acl_file``. Sorted throughout, so the same inputs
make the same bytes and a second reconcile writes nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable

from cryptography import x509
from pydantic import ValidationError

from medcloud.certificates import CRL_MARKER, pem_blocks
from medcloud.kube.client import Manifest
from medcloud.models import DeviceGatewaySpec, DeviceProtocol
from medcloud.tenancy import deviceca, devicecrl, labels, mqtt
from medcloud.tenancy.store import hospital_of_namespace
from medcloud_operator.builders.devicegateway import broker_identity

PLATFORM_CRL_VALIDITY = devicecrl.DEFAULT_VALIDITY
PLATFORM_CRL_REFRESH_MARGIN = dt.timedelta(days=2)
"""The broker CA's CRL is signed again this close to its nextUpdate (the resync runs every few hours)."""
COMPONENT = "broker-trust"


def hospital_trust(secret: Manifest) -> tuple[bytes, bytes] | None:
    """(CA certificate, CRL) of a hospital's trust Secret as read; None while it has no CRL yet."""
    data = secret.get("data") or {}
    if deviceca.CA_CERT_KEY not in data or devicecrl.CRL_KEY not in data:
        return None
    return base64.b64decode(data[deviceca.CA_CERT_KEY]), base64.b64decode(data[devicecrl.CRL_KEY])


def gateway_grants(gateways: Iterable[Manifest]) -> list[mqtt.GatewayGrant]:
    """What each MQTT DeviceGateway may read at the broker: its own hospital's topics, under its identity."""
    grants = []
    for gateway in gateways:
        meta = gateway["metadata"]
        hospital = hospital_of_namespace(meta["namespace"])
        spec = gateway.get("spec") or {}
        if hospital is None or DeviceProtocol.MQTT.value not in spec.get("protocols", []):
            continue
        DeviceGatewaySpec.model_validate(spec)
        grants.append(mqtt.GatewayGrant(broker_identity(meta["name"], meta["namespace"]), hospital))
    return grants


def platform_crl_in_force(live: Manifest | None, broker_ca_pem: bytes, now: dt.datetime) -> bytes | None:
    """The broker CA's CRL from the live ConfigMap, if it is that CA's and not near its nextUpdate."""
    bundle = ((live or {}).get("data") or {}).get(mqtt.CRL_BUNDLE_KEY, "").encode()
    issuer = x509.load_pem_x509_certificate(broker_ca_pem).subject
    for block in pem_blocks(bundle, CRL_MARKER):
        crl = x509.load_pem_x509_crl(block)
        next_update = crl.next_update_utc
        if crl.issuer == issuer and next_update is not None and next_update - now > PLATFORM_CRL_REFRESH_MARGIN:
            return block
    return None


def trust_configmap(
    namespace: str,
    hospitals: Iterable[tuple[bytes, bytes]],
    broker_ca_pem: bytes,
    platform_crl: bytes,
    grants: Iterable[mqtt.GatewayGrant],
) -> Manifest:
    """The ConfigMap: every CA in one bundle, every CA's CRL in another, and the ACL."""
    trusted = sorted(set(hospitals))
    cas = [broker_ca_pem.strip() + b"\n"] + [ca.strip() + b"\n" for ca, _ in trusted]
    crls = [platform_crl.strip() + b"\n"] + [crl.strip() + b"\n" for _, crl in trusted]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": mqtt.TRUST_CONFIGMAP,
            "namespace": namespace,
            "labels": {labels.MANAGED_BY: labels.OPERATOR_NAME, labels.COMPONENT: COMPONENT},
        },
        "data": {
            mqtt.CA_BUNDLE_KEY: b"".join(cas).decode(),
            mqtt.CRL_BUNDLE_KEY: b"".join(crls).decode(),
            mqtt.ACL_KEY: mqtt.acl(grants),
        },
    }


def bundle_holds(
    live: Manifest | None,
    broker_ca_pem: bytes,
    hospital: tuple[bytes, bytes] | None,
    grants: Iterable[mqtt.GatewayGrant],
    now: dt.datetime,
) -> bool:
    """Whether the live ConfigMap already holds what one hospital's reconcile contributes: its CA and CRL,
    its gateways' grants, and a broker CA CRL in force. Then that reconcile need not read every hospital."""
    if live is None or platform_crl_in_force(live, broker_ca_pem, now) is None:
        return False
    data = live.get("data") or {}
    if hospital is not None:
        ca, crl = hospital
        if ca.strip().decode() not in data.get(mqtt.CA_BUNDLE_KEY, ""):
            return False
        if crl.strip().decode() not in data.get(mqtt.CRL_BUNDLE_KEY, ""):
            return False
    held = "\n" + data.get(mqtt.ACL_KEY, "")
    return all("\n" + mqtt.grant_block(grant) in held for grant in grants)


def granted_identities(live: Manifest | None) -> set[str]:
    """The broker identities the live ConfigMap's ACL grants topics to (the gateways' ``user`` blocks)."""
    acl = ((live or {}).get("data") or {}).get(mqtt.ACL_KEY, "")
    return {line.removeprefix("user ").strip() for line in acl.splitlines() if line.startswith("user ")}


def outlived_grants(live: Manifest | None, gateways: Iterable[Manifest]) -> set[str]:
    """The identities the ACL still grants though no MQTT DeviceGateway of theirs exists any more."""
    wanted = set()
    for gateway in gateways:
        try:
            wanted |= {grant.identity for grant in gateway_grants([gateway])}
        except ValidationError:
            continue  # a gateway the model refuses has no grant (its reconcile reports InvalidSpec)
    return granted_identities(live) - wanted


def trust_due(live: Manifest | None, desired: Manifest) -> bool:
    """Whether the live ConfigMap differs from the desired one in what the broker reads."""
    return live is None or (live.get("data") or {}) != desired["data"]
