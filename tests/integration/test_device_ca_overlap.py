"""A hospital's device CA rotated without an outage: the old CA's devices keep working until it is retired.

Everything runs for real: the API server, the whole operator (it makes the
tenant CA for a real Hospital, signs Devices, rotates when the Hospital's
``spec.deviceCaRotation.rotateNow`` grows, keeps the trust Secret and the
platform broker's bundle), the gateway's HTTPS listener over the session's
MinIO and a Mosquitto with the broker configuration over the same trust files.
As in ``test_device_enrolment``, :class:`Projection` stands in for the kubelet
(the trust Secret's keys as files) and the test sends the broker its SIGHUP.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client

from medcloud.kube.client import SECRET, Kube
from medcloud.models import GROUP, VERSION
from medcloud.tenancy import deviceca, mqtt
from medcloud_cli.localcluster.pki import CertificateAuthority, KeyPair
from medcloud_cli.localcluster.process import ServerProcess
from medcloud_operator.deviceca import ensure_trust, keep_device_ca
from tests.integration import test_device_enrolment as enrolment
from tests.integration import test_gateway as base
from tests.integration.test_device_enrolment import Projection, mqtt_connects, post_reading
from tests.operator_support import (
    OPERATOR_NAMESPACE,
    ClusterAdmin,
    RunningOperator,
    create_device_tenant,
    hospital_spec,
    is_ready,
)
from tests.support import wait_for

pytestmark = [pytest.mark.minio]

records = base.records
serving_ca = base.serving_ca
# The enrolment test's gateway and broker, each over this module's projection of the trust Secret.
gateway = enrolment.gateway
device_broker = enrolment.device_broker
HOSPITAL = f"carot-{uuid.uuid4().hex[:6]}"
NAMESPACE = f"hospital-{HOSPITAL}"
GATEWAY = "ward-3"
Json = dict[str, Any]


@pytest.fixture(scope="module")
def tenant(admin: ClusterAdmin, operator: RunningOperator) -> Iterator[str]:
    """A real Hospital (the operator builds its tenancy) with an HTTPS DeviceGateway."""
    admin.create("Hospital", HOSPITAL, hospital_spec(HOSPITAL))
    wait_for(lambda: is_ready(admin.get("Hospital", HOSPITAL)), f"Hospital {HOSPITAL} to be Ready", timeout=120)
    spec = {"protocols": ["https"], "deviceClasses": ["spo2"], "recordStore": "vitals"}
    admin.create("DeviceGateway", GATEWAY, spec, NAMESPACE)
    try:
        yield NAMESPACE
    finally:
        for item in admin.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "devices")["items"]:
            admin.delete("Device", item["metadata"]["name"], NAMESPACE)
        admin.delete("DeviceGateway", GATEWAY, NAMESPACE)
        admin.delete("Hospital", HOSPITAL)


@pytest.fixture
def projection(admin: ClusterAdmin, tenant: str, tmp_path: Path) -> Projection:
    trust = Projection(admin.core, tmp_path / "device-trust", NAMESPACE)
    wait_for(trust.sync, "the operator to write the hospital's trust Secret", timeout=120)
    return trust


def enrolled(admin: ClusterAdmin, device_id: str, directory: Path) -> KeyPair:
    """A Device approved at its creation (as a cluster administrator may), signed by the operator: its files."""
    key = ec.generate_private_key(ec.SECP256R1())
    pair = KeyPair(directory / f"{device_id}.crt", directory / f"{device_id}.key")
    pair.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    )
    csr = request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    spec = {"gateway": GATEWAY, "deviceClass": "spo2", "owner": "ward 3", "csr": csr, "approved": True}
    admin.create("Device", device_id, spec, NAMESPACE)
    status: Json = wait_for(
        lambda: _status_in(admin, device_id, "Enrolled"), f"device {device_id} to be Enrolled", timeout=120
    )
    pair.cert.write_text(status["certificate"])
    return pair


def _status_in(admin: ClusterAdmin, device_id: str, state: str) -> Json | None:
    status: Json = (admin.get("Device", device_id, NAMESPACE) or {}).get("status") or {}
    return status if status.get("state") == state else None


def issuer_name(pem: bytes) -> str:
    names = x509.load_pem_x509_certificate(pem).issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value)


def trusted_cas(projection: Projection) -> list[str]:
    """The CAs the projected ``ca.crt`` holds, by name, once the files are the Secret's."""
    projection.sync()
    return names(projection.ca.read_bytes())


def device_ca_status(admin: ClusterAdmin) -> Json:
    status: Json = ((admin.get("Hospital", HOSPITAL) or {}).get("status") or {}).get("deviceCa") or {}
    return status


def names(bundle: bytes) -> list[str]:
    return [
        deviceca.ca_name(c.public_bytes(serialization.Encoding.PEM)) for c in x509.load_pem_x509_certificates(bundle)
    ]


def broker_trusts(admin: ClusterAdmin) -> list[str]:
    """The hospital's CAs the platform broker's bundle holds, by name, in its order."""
    live = admin.core.read_namespaced_config_map(mqtt.TRUST_CONFIGMAP, OPERATOR_NAMESPACE)
    bundle = (live.data or {}).get(mqtt.CA_BUNDLE_KEY, "").encode()
    return [name for name in names(bundle) if name.startswith(f"{HOSPITAL} ")]


def serving_issuer(admin: ClusterAdmin) -> str:
    secret = admin.core.read_namespaced_secret(deviceca.serving_secret_name(f"gw-{GATEWAY}"), NAMESPACE)
    return issuer_name(base64.b64decode(secret.data[deviceca.TLS_CERT_KEY]))


def test_a_rotation_keeps_the_old_cas_devices_until_it_is_retired(
    admin: ClusterAdmin,
    projection: Projection,
    gateway: base.Running,
    device_broker: tuple[int, ServerProcess],
    serving_ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    port, broker = device_broker
    assert broker.pid is not None
    first, second = f"{HOSPITAL} device CA", f"{HOSPITAL} device CA 2"

    def reloaded() -> None:
        """The files as the Secret is now, and Mosquitto told (the gateway re-reads them by itself)."""
        projection.sync()
        os.kill(broker.pid or 0, signal.SIGHUP)

    def served(pair: KeyPair, minute: int) -> bool:
        return post_reading(gateway, pair.cert, pair.key, minute) == 201

    def connects(pair: KeyPair) -> bool:
        return mqtt_connects(port, serving_ca.paths.cert, pair.cert, pair.key)

    kept, doomed = enrolled(admin, "ox-1", tmp_path), enrolled(admin, "ox-2", tmp_path)
    assert issuer_name(kept.cert.read_bytes()) == first
    wait_for(lambda: trusted_cas(projection) == [first], "the trust Secret to hold the first CA", timeout=60)
    assert served(kept, 1)
    assert connects(kept)

    admin.custom.patch_cluster_custom_object(
        GROUP, VERSION, "hospitals", HOSPITAL, {"spec": {"deviceCaRotation": {"rotateNow": 1}}}
    )
    wait_for(lambda: trusted_cas(projection) == [second, first], "the trust Secret to hold both CAs", timeout=120)
    wait_for(lambda: device_ca_status(admin).get("generation") == 2, "the Hospital's status to name the new CA", 60)
    status = device_ca_status(admin)
    assert (status["generation"], status["observedRotateNow"], status["current"]["name"]) == (2, 1, second)
    assert status["previous"]["name"] == first
    assert status["previous"]["trustedUntil"]  # the old devices' certificates' end at the latest
    assert admin.has_event("Hospital", HOSPITAL, "DeviceCARotated")
    assert "PRIVATE KEY" not in str(status)
    wait_for(lambda: serving_issuer(admin) == second, "the gateway's serving certificate from the new CA", 60)
    wait_for(lambda: broker_trusts(admin) == [second, first], "the platform broker's bundle to hold both", 60)
    reloaded()

    # The old CA's device still works everywhere; a new one comes from the new CA and works too.
    wait_for(lambda: served(kept, 2), "the old CA's device to be served after the rotation", timeout=30)
    assert connects(kept)
    fresh = enrolled(admin, "ox-3", tmp_path)
    assert issuer_name(fresh.cert.read_bytes()) == second
    assert served(fresh, 3)
    assert connects(fresh)

    # Revoking a device of the old CA: its CRL (still signed, the old key is kept) lists it.
    doomed_serial = x509.load_pem_x509_certificate(doomed.cert.read_bytes()).serial_number
    admin.custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "devices", "ox-2", {"spec": {"revoked": True}}
    )
    wait_for(lambda: projection.sync() and doomed_serial in projection.revoked(), "the old CA's CRL to list ox-2", 120)
    reloaded()
    wait_for(lambda: not served(doomed, 4), "HTTPS to refuse the revoked old-CA device", timeout=30)
    wait_for(lambda: not connects(doomed), "the broker to refuse the revoked old-CA device", timeout=30)
    assert served(kept, 5)

    # The old CA's last unrevoked device re-enrols (its Device deleted): nothing needs the old CA any more.
    admin.delete("Device", "ox-1", NAMESPACE)
    wait_for(lambda: trusted_cas(projection) == [second], "the old CA to be dropped from trust", timeout=120)
    wait_for(
        lambda: (
            admin.core.list_namespaced_secret(
                NAMESPACE, field_selector=f"metadata.name={deviceca.PREVIOUS_CA_SECRET}"
            ).items
            == []
        ),
        "the old CA's key to be deleted",
        timeout=60,
    )
    wait_for(lambda: "previous" not in device_ca_status(admin), "the Hospital's status to drop the old CA", 60)
    assert admin.has_event("Hospital", HOSPITAL, "DeviceCARetired")
    reloaded()
    wait_for(lambda: not served(kept, 6), "HTTPS to refuse the retired CA's device", timeout=30)
    wait_for(lambda: not connects(kept), "the broker to refuse the retired CA's device", timeout=30)
    assert served(fresh, 7)
    assert connects(fresh)
    wait_for(lambda: broker_trusts(admin) == [second], "the platform broker's bundle to drop the old CA", 60)


def test_a_rotation_cut_short_after_the_old_ca_was_moved_aside_is_finished_once_as_asked(
    admin: ClusterAdmin, projection: Projection
) -> None:
    """The operator stopped between deleting the current CA's Secret and making its successor (done here by hand,
    as the operator does it): the next reconcile makes the successor, answering the rotateNow that was asked."""
    wait_for(lambda: device_ca_status(admin).get("generation"), "the Hospital's status to name its CA", 60)
    before = device_ca_status(admin)
    generation, asked = before["generation"], before["observedRotateNow"] + 1
    live = admin.core.read_namespaced_secret(deviceca.CA_SECRET, NAMESPACE)
    annotations = {**(live.metadata.annotations or {}), deviceca.SUCCESSOR_ROTATE_NOW_ANNOTATION: str(asked)}
    aside = {
        "metadata": {"name": deviceca.PREVIOUS_CA_SECRET, "labels": live.metadata.labels, "annotations": annotations},
        "type": live.type,
        "immutable": True,
        "data": live.data,
    }
    assert "previous" not in before, "no overlap in progress: this rotation is not one that waits"
    admin.core.create_namespaced_secret(NAMESPACE, aside)
    admin.core.delete_namespaced_secret(deviceca.CA_SECRET, NAMESPACE)

    admin.custom.patch_cluster_custom_object(
        GROUP, VERSION, "hospitals", HOSPITAL, {"spec": {"deviceCaRotation": {"rotateNow": asked}}}
    )
    wait_for(
        lambda: device_ca_status(admin).get("observedRotateNow") == asked, "the Hospital to answer the rotation", 120
    )
    status = device_ca_status(admin)
    assert status["generation"] == generation + 1, "one rotation, not two"
    assert status["current"]["name"] == f"{HOSPITAL} device CA {generation + 1}"
    assert trusted_cas(projection)[0] == status["current"]["name"]


def test_a_ca_near_its_end_is_rotated_by_itself_and_a_second_reconcile_writes_nothing(
    k8s_api_client: client.ApiClient, crds: None
) -> None:
    """The Hospital's device-CA step (``keep_device_ca``) against the real API server, in a namespace no
    Hospital owns (the running operator leaves it alone), with the clock moved to the renew-before window."""
    namespace = f"hospital-carot-auto-{uuid.uuid4().hex[:6]}"
    create_device_tenant(k8s_api_client, namespace)
    writes: list[str] = []
    kube = Kube(k8s_api_client, field_manager="test-carotate", on_write=lambda kind, verb: writes.append(verb))
    hospital = namespace.removeprefix("hospital-")
    try:
        assert keep_device_ca(kube, namespace, hospital, 0) is None  # no CA yet: nothing to rotate, nothing made
        assert writes == []
        first = ensure_trust(kube, namespace, hospital).ca
        end = x509.load_pem_x509_certificate(first.cert_pem).not_valid_after_utc
        soon = end - deviceca.CA_RENEW_BEFORE + dt.timedelta(hours=1)
        early = keep_device_ca(kube, namespace, hospital, 0, soon - dt.timedelta(days=2))
        assert early is not None
        assert (early.rotated_because, early.status.generation) == (None, 1)

        rotated = keep_device_ca(kube, namespace, hospital, 0, soon)
        assert rotated is not None
        assert rotated.rotated_because is not None
        assert "within 395 days" in rotated.rotated_because
        assert rotated.status.generation == 2
        # No Device holds a certificate of the old CA: it is retired at once, its key deleted.
        assert rotated.status.previous is None
        assert rotated.trust.retired == first
        assert kube.get(SECRET, deviceca.PREVIOUS_CA_SECRET, namespace) is None
        trust = kube.get(SECRET, deviceca.TRUST_SECRET, namespace)
        assert trust is not None
        assert names(base64.b64decode(trust["data"][deviceca.CA_CERT_KEY])) == [f"{hospital} device CA 2"]

        writes.clear()
        again = keep_device_ca(kube, namespace, hospital, 0, soon)
        assert again is not None
        assert (again.rotated_because, again.status) == (None, rotated.status)
        assert writes == [], "a second reconcile with nothing changed writes nothing"
    finally:
        client.CoreV1Api(k8s_api_client).delete_namespace(namespace)
