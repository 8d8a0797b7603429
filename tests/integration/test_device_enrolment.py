"""Device enrolment end to end: CSR through the control API, approval by RBAC, certificate from the tenant CA,
readings over HTTPS and a connection to the device broker, revocation into the CRL and refusal everywhere.

Everything runs for real: the API server (RBAC, SubjectAccessReview), the
whole operator (it makes the tenant CA, signs, keeps the CRL Secret), the
control API, the gateway (HTTPS listener over the session's MinIO) and a
Mosquitto with the broker configuration the gateway documents. There is no
kubelet here, so :class:`Projection` does what the kubelet does for a Secret
volume: it writes the trust Secret's keys into files, swapping them
atomically, whenever the Secret changes. The revocation bound the test waits
for is therefore: operator reconcile (watch event) + projection + the
gateway's CRL re-read (``RELOAD``) or the broker's SIGHUP.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from medcloud.models import GROUP, VERSION
from medcloud.records.client import RecordClient
from medcloud.tenancy import deviceca, devicecrl
from medcloud.tenancy import mqtt as mqtt_names
from medcloud_api.config import APISettings
from medcloud_api.main import create_app
from medcloud_cli.localcluster.broker import BrokerInfo
from medcloud_cli.localcluster.cluster import MinioInfo
from medcloud_cli.localcluster.pki import CertificateAuthority, KeyPair
from medcloud_cli.localcluster.process import ServerProcess
from medcloud_cli.main import app as cli
from tests.integration import test_gateway as base
from tests.integration.test_api import serve
from tests.integration.test_gateway_broker_devices import device_mosquitto
from tests.integration.test_gateway_device_tls import device_tls_gateway, post
from tests.operator_support import OPERATOR_NAMESPACE, RunningOperator, bundle_acl, create_device_tenant
from tests.support import wait_for

pytestmark = [pytest.mark.minio]

records = base.records
serving_ca = base.serving_ca
RUN = uuid.uuid4().hex[:6]
HOSPITAL = f"enrol-{RUN}"
NAMESPACE = f"hospital-{HOSPITAL}"
CALLERS = f"enrol-callers-{RUN}"
GATEWAY = "ward-3"
READING = {"patient": "Patient/p-1001", "kind": "spo2", "value": 97, "unit": "%"}


class Projection:
    """The trust Secret's ``ca.crt`` and ``ca.crl`` as files, rewritten atomically when the Secret changes."""

    def __init__(self, core: client.CoreV1Api, directory: Path, namespace: str = NAMESPACE) -> None:
        self.core, self.directory, self.namespace = core, directory, namespace
        directory.mkdir(parents=True, exist_ok=True)
        self.ca, self.crl = directory / deviceca.CA_CERT_KEY, directory / devicecrl.CRL_KEY
        self.version = ""

    def sync(self) -> bool:
        """True once the files hold the Secret as it is now."""
        try:
            secret = self.core.read_namespaced_secret(deviceca.TRUST_SECRET, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        if secret.metadata.resource_version != self.version:
            for path, key in ((self.ca, deviceca.CA_CERT_KEY), (self.crl, devicecrl.CRL_KEY)):
                partial = path.with_suffix(".tmp")
                partial.write_bytes(base64.b64decode(secret.data[key]))
                partial.replace(path)
            self.version = str(secret.metadata.resource_version)
        return True

    def revoked(self) -> frozenset[int]:
        return devicecrl.revoked_serials(self.crl.read_bytes(), self.ca.read_bytes())


class Caller:
    def __init__(self, token: str) -> None:
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}


def csr(device_id: str, directory: Path) -> tuple[str, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = directory / f"{device_id}.key"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    )
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode(), key_file


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def core(k8s_api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_api_client)


@pytest.fixture(scope="module")
def tenant(k8s_api_client: client.ApiClient, core: client.CoreV1Api, operator: RunningOperator) -> Iterator[str]:
    """A hospital namespace as the Hospital tenancy leaves it for devices: the operator's Secret RoleBinding, a
    DeviceGateway (its RecordStore is not needed to enrol)."""
    create_device_tenant(k8s_api_client, NAMESPACE)
    client.CustomObjectsApi(k8s_api_client).create_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        "devicegateways",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DeviceGateway",
            "metadata": {"name": GATEWAY},
            "spec": {"protocols": ["https", "mqtt"], "deviceClasses": ["spo2"], "recordStore": "vitals"},
        },
    )
    try:
        yield NAMESPACE
    finally:
        custom = client.CustomObjectsApi(k8s_api_client)
        for plural in ("devices", "devicegateways"):
            for item in custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural)["items"]:
                with contextlib.suppress(ApiException):
                    custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, item["metadata"]["name"])
        core.delete_namespace(NAMESPACE)


@pytest.fixture(scope="module")
def callers(k8s_api_client: client.ApiClient, core: client.CoreV1Api, tenant: str) -> Iterator[dict[str, Caller]]:
    """``approver`` may create, approve and revoke devices in the tenant; ``requester`` may only ask."""
    rbac = client.RbacAuthorizationV1Api(k8s_api_client)
    core.create_namespace({"metadata": {"name": CALLERS}})
    verbs = {"approver": ["get", "list", "create", "approve", "revoke"], "requester": ["get", "list", "create"]}
    out = {}
    for name, allowed in verbs.items():
        core.create_namespaced_service_account(CALLERS, {"metadata": {"name": name}})
        rbac.create_namespaced_role(
            tenant,
            {
                "metadata": {"name": f"device-{name}"},
                "rules": [{"apiGroups": [GROUP], "resources": ["devices"], "verbs": allowed}],
            },
        )
        rbac.create_namespaced_role_binding(
            tenant,
            {
                "metadata": {"name": f"device-{name}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"device-{name}"},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": CALLERS}],
            },
        )
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        )
        out[name] = Caller(str(core.create_namespaced_service_account_token(name, CALLERS, request).status.token))
    yield out
    core.delete_namespace(CALLERS)


@pytest.fixture(scope="module")
def api(local_cluster: Any, tenant: str) -> Iterator[httpx.Client]:
    settings = APISettings(kubeconfig=local_cluster.kubeconfig, namespace_wait_seconds=60, events_heartbeat_seconds=1)
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


@pytest.fixture
def projection(core: client.CoreV1Api, tenant: str, tmp_path: Path) -> Projection:
    trust = Projection(core, tmp_path / "device-trust")
    wait_for(trust.sync, "the operator to write the hospital's trust Secret", timeout=120)
    return trust


@pytest.fixture
def gateway(
    records: RecordClient,
    minio_server: MinioInfo,
    mqtt_broker: BrokerInfo,
    serving_ca: CertificateAuthority,
    projection: Projection,
) -> Iterator[base.Running]:
    with device_tls_gateway(
        records, minio_server, mqtt_broker, serving_ca, projection.ca, projection.crl, ["https"]
    ) as running:
        yield running


@pytest.fixture
def device_broker(
    tmp_path: Path, projection: Projection, serving_ca: CertificateAuthority
) -> Iterator[tuple[int, ServerProcess]]:
    """Mosquitto with the gateway's broker configuration over the projected CA and CRL."""
    serving = serving_ca.issue("broker", "broker", server_names=("127.0.0.1",), client=False)
    with device_mosquitto(tmp_path, projection.ca, serving, projection.crl) as running:
        yield running


# --------------------------------------------------------------------------- helpers


def post_reading(running: base.Running, cert: Path, key: Path, minute: int) -> int | str:
    """One reading of the device over a new HTTPS connection: its status, or the TLS failure's name."""
    return post(running, KeyPair(cert, key), None, minute)


def mqtt_connects(port: int, ca_file: Path, cert: Path, key: Path) -> bool:
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:6]}")
    device.tls_set(ca_certs=str(ca_file), certfile=str(cert), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    try:
        device.connect("127.0.0.1", port)
    except (ssl.SSLError, ConnectionError, OSError):
        return False
    device.loop_start()
    try:
        for _ in range(100):  # CONNACK within 10 s, or the broker closed the connection
            if device.is_connected():
                return True
            time.sleep(0.1)
        return False
    finally:
        device.disconnect()
        device.loop_stop()


def enrolled(api: httpx.Client, caller: Caller, device_id: str, directory: Path) -> tuple[dict[str, Any], Path, Path]:
    """A device enrolled through the API: asked by the requester, approved by the approver, signed by the operator."""
    request, key = csr(device_id, directory)
    asked = api.post(
        f"/v1/hospitals/{HOSPITAL}/devices",
        json={"name": device_id, "gateway": GATEWAY, "deviceClass": "spo2", "owner": "ward 3", "csr": request},
        headers=caller.headers,
    )
    assert asked.status_code == 201, asked.text
    assert asked.json()["state"] == "Pending"
    return asked.json(), key, directory / f"{device_id}.crt"


def wait_state(api: httpx.Client, caller: Caller, device_id: str, state: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/v1/hospitals/{HOSPITAL}/devices/{device_id}", headers=caller.headers).json()
        return body if body.get("state") == state else None

    found: dict[str, Any] = wait_for(reached, f"device {device_id} to be {state}", timeout=120)
    return found


def gateway_counts(k8s_api_client: client.ApiClient) -> dict[str, Any]:
    gateway = client.CustomObjectsApi(k8s_api_client).get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "devicegateways", GATEWAY
    )
    assert isinstance(gateway, dict)
    counts: dict[str, Any] = (gateway.get("status") or {}).get("devices") or {}
    return counts


def counted(k8s_api_client: client.ApiClient, operator: RunningOperator, **expected: int) -> None:
    """Until the gateway's status and the operator's metric show ``expected`` (pending, enrolled, revoked)."""

    def shown() -> bool:
        counts = gateway_counts(k8s_api_client)
        metrics = operator.metrics()
        return all(
            counts.get(state, 0) == n
            and f'medcloud_devices{{gateway="{GATEWAY}",namespace="{NAMESPACE}",state="{state}"}} {float(n)}' in metrics
            for state, n in expected.items()
        )

    wait_for(shown, f"DeviceGateway {GATEWAY} to count {expected}", timeout=60)


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


# --------------------------------------------------------------------------- tests


def test_an_approved_device_is_served_on_https_and_mqtt_and_refused_everywhere_once_revoked(
    api: httpx.Client,
    callers: dict[str, Caller],
    gateway: base.Running,
    device_broker: tuple[int, ServerProcess],
    projection: Projection,
    serving_ca: CertificateAuthority,
    local_cluster: Any,
    k8s_api_client: client.ApiClient,
    operator: RunningOperator,
    tmp_path: Path,
) -> None:
    requester, approver = callers["requester"], callers["approver"]
    _, key, cert = enrolled(api, requester, "ox-21", tmp_path)
    counted(k8s_api_client, operator, pending=1, enrolled=0, revoked=0)
    device_url = f"/v1/hospitals/{HOSPITAL}/devices/ox-21"
    # Asking is not approving: the requester holds no `approve` on devices.
    refused = problem(api.post(f"{device_url}/approval", headers=requester.headers), 403)
    assert "may not approve devices.medcloud.io" in refused["detail"]
    assert api.get(device_url, headers=requester.headers).json()["state"] == "Pending"

    approved = api.post(f"{device_url}/approval", headers=approver.headers)
    assert approved.status_code == 200, approved.text
    assert approved.json()["approvedBy"] == f"system:serviceaccount:{CALLERS}:approver"
    issued = wait_state(api, requester, "ox-21", "Enrolled")
    cert.write_text(issued["certificate"])
    serial = int(issued["serial"], 16)
    assert x509.load_pem_x509_certificate(cert.read_bytes()).serial_number == serial

    listed = local_cluster.kubectl("get", "devices", "-n", NAMESPACE).stdout
    (row,) = [line for line in listed.splitlines() if line.startswith("ox-21 ")]
    for shown in (GATEWAY, "spo2", "ward 3", "Enrolled", issued["serial"]):
        assert shown in row, listed

    counted(k8s_api_client, operator, pending=0, enrolled=1, revoked=0)
    assert post_reading(gateway, cert, key, 1) == 201
    port, broker = device_broker
    assert mqtt_connects(port, serving_ca.paths.cert, cert, key)

    assert problem(api.post(f"{device_url}/revocation", headers=requester.headers), 403)
    revoked = api.post(f"{device_url}/revocation", headers=approver.headers)
    assert revoked.status_code == 200, revoked.text
    wait_state(api, requester, "ox-21", "Revoked")
    # Operator -> trust Secret -> files (the kubelet's part) -> gateway re-read / broker SIGHUP.
    wait_for(lambda: projection.sync() and serial in projection.revoked(), "the CRL Secret to list ox-21", timeout=120)
    # The platform broker's bundle too, by the same operator (builders.brokertrust), for the broker's sync.
    wait_for(lambda: serial in bundle_revocations(k8s_api_client), "the broker's trust bundle to list ox-21", 60)
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGHUP)  # Mosquitto re-reads its CRL (docs/devices.md: who sends it in a pod)
    wait_for(lambda: post_reading(gateway, cert, key, 2) != 201, "HTTPS to refuse the revoked device", timeout=30)
    wait_for(lambda: not mqtt_connects(port, serving_ca.paths.cert, cert, key), "the broker to refuse it", timeout=30)
    counted(k8s_api_client, operator, pending=0, enrolled=0, revoked=1)


def bundle_revocations(api_client: client.ApiClient) -> set[int]:
    """Serials revoked by any CRL of the operator's broker trust ConfigMap (empty while there is none)."""
    try:
        live = client.CoreV1Api(api_client).read_namespaced_config_map(mqtt_names.TRUST_CONFIGMAP, OPERATOR_NAMESPACE)
    except ApiException as exc:
        if exc.status == 404:
            return set()
        raise
    bundle = (live.data or {}).get(mqtt_names.CRL_BUNDLE_KEY, "")
    end = "-----END X509 CRL-----"
    blocks = [part + end for part in bundle.split(end) if "BEGIN X509 CRL" in part]
    return {r.serial_number for block in blocks for r in x509.load_pem_x509_crl(block.strip().encode())}


def test_enrolment_refuses_bad_requests_with_problems(
    api: httpx.Client, callers: dict[str, Caller], tmp_path: Path
) -> None:
    requester = callers["requester"]
    request, _ = csr("ox-30", tmp_path)
    body = {"name": "ox-31", "gateway": GATEWAY, "deviceClass": "spo2", "owner": "ward 3", "csr": request}
    wrong_name = problem(api.post(f"/v1/hospitals/{HOSPITAL}/devices", json=body, headers=requester.headers), 422)
    assert "subject CN must be the device id 'ox-31'" in wrong_name["detail"]
    no_gateway = {**body, "name": "ox-30", "gateway": "nowhere"}
    missing = problem(api.post(f"/v1/hospitals/{HOSPITAL}/devices", json=no_gateway, headers=requester.headers), 422)
    assert "no DeviceGateway nowhere" in missing["detail"]
    problem(api.post(f"/v1/hospitals/{HOSPITAL}/devices", json={**body, "name": "ox-30"}), 401)
    gone = problem(
        api.post(f"/v1/hospitals/{HOSPITAL}/devices/ox-99/approval", headers=callers["approver"].headers), 404
    )
    assert "ox-99" in gone["detail"]


def test_medcloud_devices_enrolls_approves_and_revokes(
    api: httpx.Client, callers: dict[str, Caller], tmp_path: Path
) -> None:
    runner = CliRunner()
    common = ["--hospital", HOSPITAL, "--api", str(api.base_url)]

    def medcloud(caller: str, *args: str) -> tuple[int, str]:
        # Wide enough that rich wraps neither the problem's detail nor the table.
        result = runner.invoke(
            cli, ["devices", *args, *common, "--token", callers[caller].token], env={"COLUMNS": "250"}
        )
        return result.exit_code, result.output

    code, output = medcloud(
        "requester", "enroll", "bp-7", "--gateway", GATEWAY, "--class", "blood-pressure", "--owner", "ward 3",
        "--directory", str(tmp_path),
    )  # fmt: skip
    assert (code, output.strip()) == (0, "bp-7: Pending"), output
    assert (tmp_path / "bp-7.key").stat().st_mode & 0o077 == 0  # the key is the device's alone
    code, output = medcloud("requester", "approve", "bp-7")
    assert code == 1
    assert "may not approve devices.medcloud.io" in output
    assert medcloud("approver", "approve", "bp-7")[0] == 0
    issued = wait_state(api, callers["requester"], "bp-7", "Enrolled")
    code, output = medcloud("requester", "show", "bp-7")
    assert code == 0
    assert issued["certificate"].strip() in output
    assert medcloud("approver", "revoke", "bp-7")[0] == 0
    wait_state(api, callers["requester"], "bp-7", "Revoked")
    code, output = medcloud("requester", "list")
    assert code == 0
    (row,) = [line for line in output.splitlines() if line.strip().startswith("bp-7 ")]
    assert "Revoked" in row
    assert issued["serial"] in row


def test_a_deleted_mqtt_gateways_broker_grant_is_withdrawn(k8s_api_client: client.ApiClient, tenant: str) -> None:
    """Its identity's certificate stays valid until it expires, so the ACL is what stops it reading readings."""
    custom = client.CustomObjectsApi(k8s_api_client)
    spec = {"protocols": ["mqtt"], "deviceClasses": ["spo2"], "recordStore": "vitals"}
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DeviceGateway", "metadata": {"name": "ward-9"}, "spec": spec}
    custom.create_namespaced_custom_object(GROUP, VERSION, tenant, "devicegateways", body)
    grant = f"user gw-ward-9.{tenant}\n"
    wait_for(lambda: grant in bundle_acl(k8s_api_client), "the new gateway's grant in the broker's ACL", 120)

    custom.delete_namespaced_custom_object(GROUP, VERSION, tenant, "devicegateways", "ward-9")

    wait_for(lambda: grant not in bundle_acl(k8s_api_client), "the deleted gateway's grant withdrawn", 120)
    assert f"user gw-{GATEWAY}.{tenant}\n" in bundle_acl(k8s_api_client), "the other gateway's grant is kept"
