"""AppInstances, DeviceGateways and Consortia against the real local cluster.

The operator runs in-process (Kopf's KopfRunner) as its own identity, bound
to nothing but deploy/operator-rbac.yaml and deploy/recordstore-operator-rbac.yaml,
so these tests also prove that RBAC is enough. Every handler runs: Hospitals
become tenants, RecordStores become Ready for real on the session's MinIO,
and apps and gateways run as Deployments whose pods the scheduler places on
KWOK nodes in a namespace that enforces Pod Security ``restricted``. Tests
talk to the API server as admin through the kubernetes client, never
through the operator's own code.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client
from paho.mqtt.enums import CallbackAPIVersion

from medcloud.tenancy import deviceca
from medcloud_cli.localcluster.broker import BrokerInfo
from tests.operator_support import (
    GROUP,
    PLURALS,
    VERSION,
    ClusterAdmin,
    Json,
    RunningOperator,
    api_ready,
    audit_lines,
    audit_writes,
    condition,
    hospital_spec,
    raw,
    sample,
)
from tests.support import wait_for

pytestmark = pytest.mark.cluster


# --------------------------------------------------------------------------- helpers


class Cluster(ClusterAdmin):
    """Admin access to the cluster under test."""

    def patch(self, kind: str, name: str, patch: Json, namespace: str) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURALS[kind], name, patch, _content_type="application/merge-patch+json"
        )

    def deployment(self, namespace: str, name: str) -> Json | None:
        return raw(self.apps.read_namespaced_deployment, name, namespace)

    def service(self, namespace: str, name: str) -> Json | None:
        return raw(self.core.read_namespaced_service, name, namespace)

    def pods(self, namespace: str, selector: str) -> list[Json]:
        return list((raw(self.core.list_namespaced_pod, namespace, label_selector=selector) or {}).get("items", []))

    def wait_ready(self, kind: str, name: str, namespace: str | None = None, timeout: float = 90) -> Json:
        def ready() -> Json | None:
            obj = self.get(kind, name, namespace)
            return obj if api_ready(obj) else None

        return wait_for(ready, f"{kind} {namespace or ''}/{name} to be Ready", timeout)

    def wait_condition(
        self, kind: str, name: str, namespace: str | None, type_: str, status: str, reason: str, timeout: float = 60
    ) -> Json:
        def reached() -> Json | None:
            obj = self.get(kind, name, namespace)
            cond = condition(obj, type_)
            return obj if cond and (cond["status"], cond["reason"]) == (status, reason) else None

        return wait_for(reached, f"{kind} {name}: {type_}={status} ({reason})", timeout)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(k8s_api_client: client.ApiClient, crds: None) -> Cluster:
    return Cluster(k8s_api_client)


class Made:
    """Everything the tests create; removed (workloads, stores, hospitals, consortia) when the module ends."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.hospitals: list[str] = []
        self.consortia: list[str] = []

    def hospital(self, prefix: str = "h", *, name: str | None = None, **spec: Any) -> str:
        """A new Hospital (named ``name``, else uniquely after ``prefix``), once Ready; returns its name."""
        name = name or f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.cluster.create("Hospital", name, hospital_spec(name, **spec))
        self.hospitals.append(name)
        self.cluster.wait_ready("Hospital", name)
        return name

    def store(self, namespace: str, name: str) -> None:
        spec = {"recordClass": "device-data", "retention": {"mode": "GOVERNANCE", "period": "1d"}}
        self.cluster.create("RecordStore", name, spec, namespace)

    def consortium(self, name: str, members: list[str]) -> None:
        spec = {"displayName": f"Alliance {name}", "leadHospital": members[0], "members": members}
        self.cluster.create("Consortium", name, spec)
        self.consortia.append(name)

    def cleanup(self) -> None:
        for name in self.consortia:
            self.cluster.delete("Consortium", name)
        for hospital in self.hospitals:
            namespace = f"hospital-{hospital}"
            for kind in ("AppInstance", "DeviceGateway", "RecordStore"):
                listed = raw(
                    self.cluster.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURALS[kind]
                )
                for item in (listed or {}).get("items", []):
                    self.cluster.delete(kind, item["metadata"]["name"], namespace)
        for hospital in self.hospitals:
            # Deletion is refused while RecordStores remain; it goes through once they are gone.
            self.cluster.delete("Hospital", hospital)
        for hospital in self.hospitals:
            wait_for(partial(self.cluster.gone, "Hospital", hospital), f"Hospital {hospital} gone", 180)
        for name in self.consortia:
            wait_for(partial(self.cluster.gone, "Consortium", name), f"Consortium {name} gone", 60)


@pytest.fixture(scope="module")
def made(cluster: Cluster, operator: RunningOperator) -> Iterator[Made]:
    tracker = Made(cluster)
    try:
        yield tracker
    finally:
        tracker.cleanup()


@dataclass(frozen=True)
class Tenant:
    hospital: str
    namespace: str
    store: str


@pytest.fixture(scope="module")
def tenant(cluster: Cluster, made: Made) -> Tenant:
    """A Ready hospital with a Ready RecordStore, shared by the tests."""
    hospital = made.hospital("clinic", quota={"cpu": "8", "memory": "16Gi"})
    namespace = f"hospital-{hospital}"
    made.store(namespace, "device-data")
    cluster.wait_ready("RecordStore", "device-data", namespace)
    return Tenant(hospital, namespace, "device-data")


def running_on_kwok(cluster: Cluster, namespace: str, selector: str, count: int) -> list[Json]:
    def running() -> list[Json] | None:
        pods = [p for p in cluster.pods(namespace, selector) if not p["metadata"].get("deletionTimestamp")]
        ok = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        return ok if len(ok) == count else None

    pods = wait_for(running, f"{count} pods ({selector}) Running", 90)
    for pod in pods:
        node = raw(cluster.core.read_node, pod["spec"]["nodeName"]) or {}
        assert node["metadata"]["annotations"].get("kwok.x-k8s.io/node") == "fake"
    return pods


# --------------------------------------------------------------------------- tests


def test_a_gateway_and_an_app_become_ready_with_pods_running(cluster: Cluster, made: Made, tenant: Tenant) -> None:
    ns = tenant.namespace
    cluster.create(
        "DeviceGateway",
        "wards",
        {"protocols": ["mqtt", "https", "hl7v2"], "deviceClasses": ["ecg", "spo2"], "recordStore": tenant.store},
        ns,
    )
    cluster.create(
        "AppInstance",
        "consult",
        {
            "app": "remote-consultation",
            "version": "1.8.0",
            "replicas": 2,
            "recordStore": tenant.store,
            "deviceGateway": "wards",
            "exposure": {"host": "consult.clinic.test.example"},
            "config": {"language": "zh-CN", "audit.retention": "30y"},
        },
        ns,
    )
    gateway = cluster.wait_ready("DeviceGateway", "wards", ns)
    app = cluster.wait_ready("AppInstance", "consult", ns)

    # The gateway: where devices connect, one Service port per protocol, no Devices yet (active is not claimed).
    host = f"gw-wards.{ns}.svc"
    assert gateway["status"]["endpoints"] == {
        "hl7v2": f"mllp://{host}:2575",
        "https": f"https://{host}:8443",
        "mqtt": f"mqtts://{host}:8883",
    }
    assert gateway["status"]["devices"] == {"enrolled": 0, "revoked": 0, "pending": 0}
    # Its pods mount the hospital's device trust (CA + CRL) and a serving certificate of the same CA.
    assert cluster.core.read_namespaced_secret("medcloud-device-trust", ns).data["ca.crl"]
    assert cluster.core.read_namespaced_secret("gw-wards-serving", ns).type == "kubernetes.io/tls"
    assert (condition(gateway, "DependenciesReady") or {})["status"] == "True"
    service = cluster.service(ns, "gw-wards")
    assert service is not None
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"mqtt": 8883, "https": 8443, "mllp": 2575}
    running_on_kwok(cluster, ns, "app.kubernetes.io/component=devicegateway,app.kubernetes.io/instance=wards", 1)

    # The app: its pods, its URL, its wiring, its config and its Ingress.
    assert app["status"]["readyReplicas"] == 2
    assert app["status"]["url"] == "https://consult.clinic.test.example/"
    pods = running_on_kwok(cluster, ns, "app.kubernetes.io/component=appinstance,app.kubernetes.io/instance=consult", 2)
    store = cluster.get("RecordStore", tenant.store, ns)
    assert store is not None
    secret = store["status"]["secretRef"]["name"]
    deployment = cluster.deployment(ns, "app-consult")
    assert deployment is not None
    meta_labels = deployment["metadata"]["labels"]
    assert meta_labels["app.kubernetes.io/managed-by"] == "medcloud-operator"
    assert meta_labels["medcloud.io/hospital"] == tenant.hospital
    assert meta_labels["app.kubernetes.io/component"] == "appinstance"
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == app["metadata"]["uid"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # MedCloud's own code: MedCloud's image with the catalog entry's args, as its own ServiceAccount
    # holding an exchange token only, bound to the exchange-client ClusterRole, let out to the exchange only.
    assert container["image"] == "registry.test.example/medcloud:test"
    assert container["args"] == ["app", "remote-consultation"]
    pod_spec = deployment["spec"]["template"]["spec"]
    assert (pod_spec["serviceAccountName"], pod_spec["automountServiceAccountToken"]) == ("app-consult", False)
    (token,) = [v for v in pod_spec["volumes"] if "projected" in v]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "medcloud-exchange"
    account = raw(cluster.core.read_namespaced_service_account, "app-consult", ns)
    assert account is not None
    assert account["automountServiceAccountToken"] is False
    binding = raw(cluster.rbac.read_namespaced_role_binding, "app-consult", ns)
    assert binding is not None
    assert binding["roleRef"]["name"] == "medcloud-exchange-client"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "app-consult", "namespace": ns}]
    policy = raw(cluster.net.read_namespaced_network_policy, "app-consult", ns)
    assert policy is not None
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "consult"
    assert policy["spec"]["egress"][0]["ports"] == [{"protocol": "TCP", "port": 8090}]
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == "app-consult"
    assert container["envFrom"] == [{"secretRef": {"name": secret}}]
    assert raw(cluster.core.read_namespaced_secret, secret, ns) is not None
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MEDCLOUD_DEVICE_GATEWAY_HOST"] == host
    # The pods the namespace's Pod Security admission let in are restricted ones.
    for pod in pods:
        ctx = pod["spec"]["containers"][0]["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    config_map = raw(cluster.core.read_namespaced_config_map, "app-consult", ns)
    assert config_map is not None
    assert config_map["data"] == {"language": "zh-CN", "audit.retention": "30y"}
    ingress = raw(cluster.net.read_namespaced_ingress, "app-consult", ns)
    assert ingress is not None
    assert ingress["spec"]["rules"][0]["host"] == "consult.clinic.test.example"
    wait_for(lambda: cluster.has_event("AppInstance", "consult", "Ready", ns), "a Ready event on the app")

    # Internal only once the host is removed: the Ingress goes, the URL names the Service.
    cluster.patch("AppInstance", "consult", {"spec": {"exposure": {"host": None}}}, ns)
    app = cluster.wait_ready("AppInstance", "consult", ns)
    assert app["status"]["url"] == f"http://app-consult.{ns}.svc/"
    assert raw(cluster.net.read_namespaced_ingress, "app-consult", ns) is None

    # Deleting the app lets the garbage collector remove its children (owner references).
    cluster.delete("AppInstance", "consult", ns)
    wait_for(lambda: cluster.deployment(ns, "app-consult") is None, "the app's Deployment to be collected", 90)
    wait_for(lambda: cluster.service(ns, "app-consult") is None, "the app's Service to be collected", 90)
    wait_for(
        lambda: raw(cluster.rbac.read_namespaced_role_binding, "app-consult", ns) is None,
        "the app's RoleBinding to be collected",
        90,
    )


def _may_get_keys(cluster: Cluster, user: str, namespace: str, store: str) -> bool:
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            resource_attributes=client.V1ResourceAttributes(
                group=GROUP, resource="recordstores", subresource="keys", verb="get", name=store, namespace=namespace
            ),
        )
    )
    return bool(client.AuthorizationV1Api(cluster.api).create_subject_access_review(review).status.allowed)


def test_emr_sharing_is_bound_to_its_own_stores_keys_and_loses_them_with_the_app(
    cluster: Cluster, made: Made, tenant: Tenant
) -> None:
    """The operator (with exactly deploy/operator-rbac.yaml) grants the connector `get recordstores/keys` on
    the store its spec names, and on nothing else; the grant goes when the AppInstance goes."""
    ns = tenant.namespace
    other = "emr-other"
    made.store(ns, other)
    cluster.create("AppInstance", "share", {"app": "emr-sharing", "version": "1.0.0", "recordStore": tenant.store}, ns)
    cluster.wait_ready("AppInstance", "share", ns)
    role = raw(cluster.rbac.read_namespaced_role, "app-share-store-keys", ns)
    assert role is not None
    assert role["rules"] == [
        {"apiGroups": [GROUP], "resources": ["recordstores/keys"], "resourceNames": [tenant.store], "verbs": ["get"]}
    ]
    binding = raw(cluster.rbac.read_namespaced_role_binding, "app-share-store-keys", ns)
    assert binding is not None
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "app-share", "namespace": ns}]
    user = f"system:serviceaccount:{ns}:app-share"
    wait_for(lambda: _may_get_keys(cluster, user, ns, tenant.store), "RBAC to grant the connector its store's keys")
    assert not _may_get_keys(cluster, user, ns, other), "another store of the same hospital"
    assert not _may_get_keys(cluster, f"system:serviceaccount:{ns}:app-nobody", ns, tenant.store)

    # Pointed at the other store, the grant follows it; the first store's keys are no longer granted.
    cluster.patch("AppInstance", "share", {"spec": {"recordStore": other}}, ns)
    wait_for(lambda: _may_get_keys(cluster, user, ns, other), "the grant to follow spec.recordStore")
    assert not _may_get_keys(cluster, user, ns, tenant.store)

    cluster.delete("AppInstance", "share", ns)
    wait_for(
        lambda: (
            raw(cluster.rbac.read_namespaced_role, "app-share-store-keys", ns) is None
            and raw(cluster.rbac.read_namespaced_role_binding, "app-share-store-keys", ns) is None
        ),
        "the key grant to be collected",
        90,
    )
    assert not _may_get_keys(cluster, user, ns, other)


def broker_accepts(broker: BrokerInfo, cert_pem: bytes, key_pem: bytes, directory: Path) -> bool:
    """Whether the real broker completes an MQTT CONNECT with this client certificate (CONNACK within 10 s)."""
    cert, key = directory / "client.crt", directory / "client.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    connected = threading.Event()
    mqtt_client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:6]}")
    mqtt_client.on_connect = lambda _c, _u, _f, reason, _p: connected.set() if not reason.is_failure else None
    mqtt_client.tls_set(ca_certs=broker.ca_file, certfile=str(cert), keyfile=str(key))
    try:
        mqtt_client.connect(broker.host, broker.port)
    except (ssl.SSLError, OSError):
        return False
    mqtt_client.loop_start()
    try:
        return connected.wait(10)
    finally:
        mqtt_client.disconnect()
        mqtt_client.loop_stop()


def secret_data(cluster: Cluster, name: str, namespace: str) -> dict[str, bytes]:
    secret = raw(cluster.core.read_namespaced_secret, name, namespace)
    assert secret is not None, name
    return {key: base64.b64decode(value) for key, value in secret["data"].items()}


def test_the_gateway_gets_a_broker_client_certificate_the_real_broker_accepts_and_a_renewal_before_expiry(
    cluster: Cluster, tenant: Tenant, mqtt_broker: BrokerInfo, tmp_path: Path
) -> None:
    ns = tenant.namespace
    cluster.create(
        "DeviceGateway",
        "bedside",
        {"protocols": ["mqtt", "hl7v2"], "deviceClasses": ["spo2"], "recordStore": tenant.store},
        ns,
    )
    cluster.wait_ready("DeviceGateway", "bedside", ns)
    broker = secret_data(cluster, "gw-bedside-broker", ns)
    assert sorted(broker) == ["ca.crt", "tls.crt", "tls.key"]
    assert broker["ca.crt"] == Path(mqtt_broker.ca_file).read_bytes()
    cert = x509.load_pem_x509_certificate(broker["tls.crt"])
    ca = x509.load_pem_x509_certificate(broker["ca.crt"])
    assert cert.issuer == ca.subject
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [f"gw-bedside.{ns}"]
    # The broker the session runs (client certificates required) takes it.
    assert broker_accepts(mqtt_broker, broker["tls.crt"], broker["tls.key"], tmp_path)

    # The serving certificate names the Service devices reach.
    serving = x509.load_pem_x509_certificate(secret_data(cluster, "gw-bedside-serving", ns)["tls.crt"])
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == [
        f"gw-bedside.{ns}.svc",
        f"gw-bedside.{ns}.svc.cluster.local",
    ]

    # The pod mounts both read-only, and the template carries their digest.
    deployment = cluster.deployment(ns, "gw-bedside")
    assert deployment is not None
    template = deployment["spec"]["template"]
    mounts = {m["name"]: m for m in template["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["broker-tls"]["readOnly"]
    assert mounts["serving-tls"]["readOnly"]
    digest = template["metadata"]["annotations"]["medcloud.io/certificates"]
    # No key material in the gateway's status or its namespace's events.
    gateway = cluster.get("DeviceGateway", "bedside", ns)
    events = raw(cluster.core.list_namespaced_event, ns) or {}
    for text in (json.dumps(gateway), json.dumps(events)):
        assert "PRIVATE KEY" not in text
        assert "BEGIN CERTIFICATE" not in text

    # A certificate 10 days from its end (someone else's clock, or months of running): the next reconcile
    # issues a fresh one and the pods roll onto it.
    ca_key = serialization.load_pem_private_key(Path(mqtt_broker.ca_key_file).read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    old = deviceca.sign_client(
        deviceca.TenantCA(broker["ca.crt"], Path(mqtt_broker.ca_key_file).read_bytes()), f"gw-bedside.{ns}", now=now
    )
    short = (
        x509.CertificateBuilder()
        .subject_name(x509.load_pem_x509_certificate(old.cert_pem).subject)
        .issuer_name(ca.subject)
        .public_key(x509.load_pem_x509_certificate(old.cert_pem).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=80))
        .not_valid_after(now + dt.timedelta(days=10))
        .sign(ca_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cluster.core.patch_namespaced_secret(
        "gw-bedside-broker",
        ns,
        {"data": {"tls.crt": base64.b64encode(short).decode(), "tls.key": base64.b64encode(old.key_pem).decode()}},
    )
    cluster.patch("DeviceGateway", "bedside", {"spec": {"deviceClasses": ["spo2", "ecg"]}}, ns)

    def renewed() -> bytes | None:
        current = secret_data(cluster, "gw-bedside-broker", ns)["tls.crt"]
        return current if current != short else None

    fresh = x509.load_pem_x509_certificate(wait_for(renewed, "the broker certificate renewed", 60))
    assert fresh.not_valid_after_utc - now > dt.timedelta(days=80)

    def rolled() -> str | None:
        deployment = cluster.deployment(ns, "gw-bedside") or {}
        value = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
        found = value.get("medcloud.io/certificates")
        return found if found and found != digest else None

    wait_for(rolled, "the gateway's pod template to carry the new certificate's digest", 60)
    cluster.delete("DeviceGateway", "bedside", ns)


def test_a_missing_record_store_is_reported_until_it_exists(cluster: Cluster, made: Made, tenant: Tenant) -> None:
    ns = tenant.namespace
    cluster.create("AppInstance", "referrals", {"app": "referrals", "version": "3.0.0", "recordStore": "later"}, ns)
    app = cluster.wait_condition("AppInstance", "referrals", ns, "DependenciesReady", "False", "RecordStoreNotFound")
    deps = condition(app, "DependenciesReady") or {}
    assert "RecordStore later (spec.recordStore) does not exist" in deps["message"]
    ready = condition(app, "Ready") or {}
    assert (ready["status"], ready["reason"]) == ("False", "RecordStoreNotFound")
    assert app["status"]["phase"] == "Pending"
    assert app["status"]["observedGeneration"] == app["metadata"]["generation"]
    wait_for(
        lambda: cluster.has_event("AppInstance", "referrals", "RecordStoreNotFound", ns, "Warning"),
        "a Warning event naming the missing store",
    )

    # The store appears and becomes Ready: the app follows without being touched.
    made.store(ns, "later")
    cluster.wait_ready("RecordStore", "later", ns)
    app = cluster.wait_ready("AppInstance", "referrals", ns)
    assert (condition(app, "DependenciesReady") or {})["reason"] == "DependenciesReady"
    cluster.delete("AppInstance", "referrals", ns)


def test_children_deleted_or_edited_by_hand_are_put_back(
    cluster: Cluster, tenant: Tenant, operator: RunningOperator
) -> None:
    ns = tenant.namespace
    cluster.create("AppInstance", "booking", {"app": "appointments", "version": "1.0.0", "replicas": 1}, ns)
    cluster.create(
        "DeviceGateway", "home", {"protocols": ["mqtt"], "deviceClasses": ["glucose"], "recordStore": tenant.store}, ns
    )
    cluster.wait_ready("AppInstance", "booking", ns)
    cluster.wait_ready("DeviceGateway", "home", ns)
    before = sample(operator.metrics(), "medcloud_drift_repairs_total")

    original = cluster.deployment(ns, "app-booking")
    assert original is not None
    cluster.apps.delete_namespaced_deployment("app-booking", ns)

    def recreated() -> Json | None:
        found = cluster.deployment(ns, "app-booking")
        return found if found and found["metadata"]["uid"] != original["metadata"]["uid"] else None

    wait_for(recreated, "the deleted Deployment to be put back")
    cluster.wait_ready("AppInstance", "booking", ns)
    running_on_kwok(cluster, ns, "app.kubernetes.io/component=appinstance,app.kubernetes.io/instance=booking", 1)

    # Loosen the gateway's pods and scale them, and open its Service up to the node ports.
    cluster.apps.patch_namespaced_deployment(
        "gw-home",
        ns,
        {"spec": {"replicas": 4, "template": {"spec": {"automountServiceAccountToken": True}}}},
        _content_type="application/merge-patch+json",
    )
    cluster.core.patch_namespaced_service(
        "gw-home", ns, {"spec": {"type": "NodePort"}}, _content_type="application/merge-patch+json"
    )

    def repaired() -> bool:
        deployment = cluster.deployment(ns, "gw-home") or {}
        service = cluster.service(ns, "gw-home") or {}
        spec = deployment.get("spec") or {}
        return (
            spec.get("replicas") == 1
            and spec["template"]["spec"].get("automountServiceAccountToken") is False
            and service.get("spec", {}).get("type") == "ClusterIP"
        )

    wait_for(repaired, "the hand-made changes to be reverted")
    cluster.wait_ready("DeviceGateway", "home", ns)
    assert sample(operator.metrics(), "medcloud_drift_repairs_total") - before >= 3
    assert cluster.has_event("DeviceGateway", "home", "DriftRepaired", ns)
    assert cluster.has_event("AppInstance", "booking", "DriftRepaired", ns)


def test_a_reconcile_with_nothing_changed_writes_nothing(
    cluster: Cluster, local_cluster: Any, tenant: Tenant, operator: RunningOperator
) -> None:
    ns = tenant.namespace
    cluster.create("AppInstance", "cards", {"app": "insurance-card", "version": "1.0.0", "replicas": 1}, ns)
    cluster.create(
        "DeviceGateway",
        "ward-b",
        {"protocols": ["https", "mqtt"], "deviceClasses": ["ecg"], "recordStore": tenant.store},
        ns,
    )
    cluster.wait_ready("AppInstance", "cards", ns)
    cluster.wait_ready("DeviceGateway", "ward-b", ns)
    audit_log: Path | None = getattr(local_cluster, "audit_log", None)

    def quiet_for_two_seconds() -> bool:
        writes = sample(operator.metrics(), "medcloud_api_writes_total")
        time.sleep(2)
        return sample(operator.metrics(), "medcloud_api_writes_total") == writes

    wait_for(quiet_for_two_seconds, "the operator to settle")
    mark = audit_lines(audit_log) if audit_log is not None else 0
    text = operator.metrics()
    writes = sample(text, "medcloud_api_writes_total")
    reconciles = {
        kind: sample(text, "medcloud_reconcile_total", kind=kind, result="success")
        for kind in ("AppInstance", "DeviceGateway")
    }

    def reconciled(kind: str, count: float) -> Callable[[], bool]:
        return lambda: sample(operator.metrics(), "medcloud_reconcile_total", kind=kind, result="success") >= count

    # Someone else's change to a child, touching nothing the operator owns: each triggers a full reconcile.
    for kind, deployment in (("AppInstance", "app-cards"), ("DeviceGateway", "gw-ward-b")):
        for i in range(2):
            cluster.apps.patch_namespaced_deployment(
                deployment,
                ns,
                {"metadata": {"annotations": {"test.medcloud.io/touch": str(i)}}},
                _content_type="application/merge-patch+json",
            )
            wait_for(reconciled(kind, reconciles[kind] + i + 1), f"{kind} reconcile {i + 1} after a foreign change")
    assert sample(operator.metrics(), "medcloud_api_writes_total") == writes
    if audit_log is not None:
        found = audit_writes(audit_log, mark)
        assert found == [], [(w["verb"], w["objectRef"]) for w in found]


def test_resources_above_the_tenants_limit_fail_with_a_reason(cluster: Cluster, tenant: Tenant) -> None:
    ns = tenant.namespace
    # The tenant's quota is 8 CPUs, so its LimitRange lets no container have more.
    resources = {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"cpu": "12", "memory": "1Gi"}}
    cluster.create(
        "DeviceGateway",
        "greedy",
        {"protocols": ["mqtt"], "deviceClasses": ["ecg"], "recordStore": tenant.store, "resources": resources},
        ns,
    )
    gateway = cluster.wait_condition("DeviceGateway", "greedy", ns, "Ready", "False", "InvalidSpec")
    assert gateway["status"]["phase"] == "Failed"
    assert "spec.resources.limits.cpu 12 is above" in (condition(gateway, "Ready") or {})["message"]
    assert cluster.deployment(ns, "gw-greedy") is None
    wait_for(lambda: cluster.has_event("DeviceGateway", "greedy", "InvalidSpec", ns, "Warning"), "a Warning event")
    cluster.delete("DeviceGateway", "greedy", ns)


def test_a_raised_quota_lets_a_refused_workload_roll_out_at_the_limit_ranges_change(
    cluster: Cluster, made: Made
) -> None:
    """The LimitRange is watched outside Kopf (a child watch): its change alone reconciles the workloads that read it.

    The refused gateway is settled (Failed at its generation), so neither a resume nor the safety net's
    comparison would look at it again before its full reconcile hours later: only the LimitRange's event can.
    """
    hospital = made.hospital("tight", quota={"cpu": "8", "memory": "16Gi"})
    ns = f"hospital-{hospital}"
    made.store(ns, "device-data")
    cluster.wait_ready("RecordStore", "device-data", ns)
    resources = {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"cpu": "12", "memory": "1Gi"}}
    spec = {"protocols": ["mqtt"], "deviceClasses": ["ecg"], "recordStore": "device-data", "resources": resources}
    cluster.create("DeviceGateway", "grows", spec, ns)
    cluster.wait_condition("DeviceGateway", "grows", ns, "Ready", "False", "InvalidSpec")

    cluster.custom.patch_cluster_custom_object(
        GROUP,
        VERSION,
        PLURALS["Hospital"],
        hospital,
        {"spec": {"quota": {"cpu": "16", "memory": "16Gi"}}},
        _content_type="application/merge-patch+json",
    )
    gateway = cluster.wait_ready("DeviceGateway", "grows", ns)
    assert cluster.deployment(ns, "gw-grows") is not None
    assert gateway["status"]["observedGeneration"] == gateway["metadata"]["generation"]


def test_a_consortium_reports_its_members(cluster: Cluster, made: Made, tenant: Tenant) -> None:
    name = f"alliance-{uuid.uuid4().hex[:6]}"
    county = made.hospital("county", consortium=name)
    late = f"late-{uuid.uuid4().hex[:6]}"
    made.consortium(name, [county, tenant.hospital, late])

    cons = cluster.wait_condition("Consortium", name, None, "Ready", "False", "MembersMissing")
    assert cons["status"]["memberCount"] == 3
    assert cons["status"]["readyMembers"] == 2
    assert cons["status"]["phase"] == "Pending"
    assert late in (condition(cons, "Ready") or {})["message"]
    # The shared tenant names no consortium: its network policies would not admit the alliance.
    membership = condition(cons, "MembershipConsistent") or {}
    assert (membership["status"], membership["reason"]) == ("False", "MembershipMismatch")
    assert tenant.hospital in membership["message"]
    wait_for(lambda: cluster.has_event("Consortium", name, "MembersMissing", type_="Warning"), "a Warning event")

    # The missing member is onboarded: the Consortium follows the Hospital's events.
    made.hospital(name=late, consortium=name)
    cons = cluster.wait_ready("Consortium", name)
    assert cons["status"]["readyMembers"] == 3
    assert cons["status"]["observedGeneration"] == cons["metadata"]["generation"]
    wait_for(lambda: cluster.has_event("Consortium", name, "AllMembersReady"), "an event when all are Ready")


def test_metrics_count_the_new_kinds(cluster: Cluster, tenant: Tenant, operator: RunningOperator) -> None:
    cluster.create(
        "AppInstance", "metrics", {"app": "appointments", "version": "1.0.0", "replicas": 0}, tenant.namespace
    )
    app = cluster.wait_ready("AppInstance", "metrics", tenant.namespace)
    assert "stopped" in (condition(app, "Available") or {})["message"]
    text = operator.metrics()
    for kind in ("AppInstance", "DeviceGateway", "Consortium"):
        assert sample(text, "medcloud_reconcile_total", kind=kind, result="success") >= 1, kind
        assert sample(text, "medcloud_reconcile_duration_seconds_count", kind=kind) >= 1, kind
    assert sample(text, "medcloud_resources", kind="AppInstance", phase="Ready") >= 1
    assert sample(text, "medcloud_api_writes_total", kind="Deployment", verb="create") >= 1
    cluster.delete("AppInstance", "metrics", tenant.namespace)
