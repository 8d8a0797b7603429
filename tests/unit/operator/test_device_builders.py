"""What the operator decides for Devices, the hospital's trust Secret and the gateway's pods (pure, no servers)."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from medcloud.models import DeviceGatewaySpec, DeviceState, DeviceStatus, Phase
from medcloud.tenancy import deviceca, devicecrl
from medcloud.tenancy import gateway as gateway_env
from medcloud_operator.builders import device as b
from medcloud_operator.builders import devicegateway as gw_b
from medcloud_operator.builders.workload import Ceiling
from medcloud_operator.settings import WorkloadSettings

NS = "hospital-city"
T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
Json = dict[str, Any]


@pytest.fixture(scope="module")
def ca() -> deviceca.TenantCA:
    return deviceca.new_ca("city", now=T0)


def csr(cn: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def device(name: str = "ox-12", status: DeviceStatus | None = None, **spec: Any) -> Json:
    body: Json = {
        "apiVersion": "medcloud.io/v1alpha1",
        "kind": "Device",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {"gateway": "ward-3", "deviceClass": "spo2", "owner": "ward 3", "csr": csr(name), **spec},
    }
    if status is not None:
        body["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return body


def test_a_device_waits_is_signed_once_approved_and_stays_revoked(ca: deviceca.TenantCA) -> None:
    pending = b.next_status(device(), DeviceStatus(), ca, T0)
    assert (pending.state, pending.phase, pending.certificate) == (DeviceState.PENDING, Phase.PENDING, None)
    approved = device(approved=True)
    enrolled = b.next_status(approved, pending, ca, T0)
    assert (enrolled.state, enrolled.phase) == (DeviceState.ENROLLED, Phase.READY)
    assert enrolled.condition("Ready") is not None
    cert = x509.load_pem_x509_certificate((enrolled.certificate or "").encode())
    assert format(cert.serial_number, "X") == enrolled.serial
    # Reconciled again: the same certificate, nothing to write.
    assert b.next_status(approved, enrolled, ca, T0 + dt.timedelta(hours=1)) == enrolled
    revoked = b.next_status(device(approved=True, revoked=True), enrolled, ca, T0 + dt.timedelta(hours=2))
    assert (revoked.state, revoked.phase, revoked.serial) == (DeviceState.REVOKED, Phase.FAILED, enrolled.serial)
    assert revoked.revoked_at == T0 + dt.timedelta(hours=2)
    assert b.next_status(device(approved=True, revoked=True), revoked, ca, T0 + dt.timedelta(days=1)) == revoked


def test_a_csr_for_another_name_is_refused_for_good(ca: deviceca.TenantCA) -> None:
    body = device("ox-12", approved=True, csr=csr("ox-99"))
    refused = b.next_status(body, DeviceStatus(), ca, T0)
    assert refused.state is DeviceState.REFUSED
    assert "subject CN must be the device id 'ox-12'" in (refused.message or "")
    assert refused.certificate is None


def test_the_crl_lists_revoked_serials_and_is_signed_again_only_when_due(ca: deviceca.TenantCA) -> None:
    enrolled = b.next_status(device(approved=True), DeviceStatus(), ca, T0)
    revoked = b.next_status(device(approved=True, revoked=True), enrolled, ca, T0)
    others = [device("bp-1", b.next_status(device("bp-1"), DeviceStatus(), ca, T0))]
    wanted = b.revocations([device(status=revoked), *others], ca.cert_pem)
    assert [format(r.serial, "X") for r in wanted] == [enrolled.serial]
    cas = [b.TrustedCA(ca, tuple(wanted))]
    assert b.crl_due(None, cas, T0)
    trust = b.trust_secret(NS, "city", cas, None, T0)
    trust["metadata"]["resourceVersion"] = "1"
    crl_pem = base64.b64decode(trust["data"][devicecrl.CRL_KEY])
    assert devicecrl.revoked_serials(crl_pem, ca.cert_pem) == {r.serial for r in wanted}
    assert base64.b64decode(trust["data"][deviceca.CA_CERT_KEY]) == ca.cert_pem
    assert deviceca.TLS_KEY_KEY not in trust["data"]  # the gateway's Secret never holds the CA key
    assert not b.crl_due(trust, cas, T0 + dt.timedelta(days=1))
    assert b.crl_due(trust, [b.TrustedCA(ca, ())], T0)  # a serial fewer (or more): sign again
    assert b.crl_due(trust, cas, T0 + b.CRL_VALIDITY - b.CRL_REFRESH_MARGIN)
    assert b.crl_due(trust, [b.TrustedCA(deviceca.new_ca("city", now=T0), tuple(wanted))], T0)  # a new CA
    again = b.trust_secret(NS, "city", cas, trust, T0 + dt.timedelta(days=6))
    assert again["metadata"]["annotations"][deviceca.CRL_NUMBER_ANNOTATION] == "2"


def test_the_ca_secret_is_immutable_and_readable_back(ca: deviceca.TenantCA) -> None:
    secret = b.ca_secret(NS, "city", ca)
    assert secret["immutable"] is True
    assert secret["type"] == "kubernetes.io/tls"
    assert b.read_ca(secret) == ca


def test_counts_come_from_the_gateways_devices(ca: deviceca.TenantCA) -> None:
    states = [
        b.next_status(device("a"), DeviceStatus(), ca, T0),
        b.next_status(device("b", approved=True), DeviceStatus(), ca, T0),
        b.next_status(device("c", approved=True), DeviceStatus(), ca, T0),
        DeviceStatus(state=DeviceState.REVOKED),
    ]
    counts = b.counts([device(f"d{i}", s) for i, s in enumerate(states)])
    assert (counts.pending, counts.enrolled, counts.revoked, counts.active) == (1, 2, 1, None)


def test_the_gateway_pods_mount_the_trust_and_serving_secrets_and_say_where() -> None:
    gateway: Json = {
        "apiVersion": "medcloud.io/v1alpha1",
        "kind": "DeviceGateway",
        "metadata": {"name": "ward-3", "namespace": NS, "uid": "u-1"},
    }
    spec = DeviceGatewaySpec.model_validate(
        {"protocols": ["https", "hl7v2"], "deviceClasses": ["spo2"], "recordStore": "v"}
    )
    pod = gw_b.build_deployment(gateway, spec, "v-credentials", Ceiling(), WorkloadSettings())["spec"]["template"][
        "spec"
    ]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {
        gw_b.TRUST_VOLUME: deviceca.TRUST_SECRET,
        gw_b.SERVING_VOLUME: deviceca.serving_secret_name("gw-ward-3"),
    }
    assert deviceca.CA_SECRET not in secrets.values()
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[gateway_env.DEVICE_CA_FILE] == f"{mounts[gw_b.TRUST_VOLUME]}/{deviceca.CA_CERT_KEY}"
    assert env[gateway_env.DEVICE_CRL_FILE] == f"{mounts[gw_b.TRUST_VOLUME]}/{devicecrl.CRL_KEY}"
    assert env[gateway_env.TLS_KEY_FILE].startswith(mounts[gw_b.SERVING_VOLUME])
    assert env[gateway_env.HL7V2_TLS] == "true"
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["name"] != "tmp")
    assert gw_b.serving_names("ward-3", NS) == [
        "gw-ward-3.hospital-city.svc",
        "gw-ward-3.hospital-city.svc.cluster.local",
    ]
