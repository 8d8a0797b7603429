"""The local cluster is real: scheduling, RBAC, CRD validation, MinIO and the TLS broker."""

from __future__ import annotations

import io
import os
import queue
import ssl
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from minio import Minio
from minio.commonconfig import GOVERNANCE
from minio.retention import Retention
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from medcloud_cli.localcluster.broker import BrokerInfo
from medcloud_cli.localcluster.cluster import (
    UNPRIVILEGED_USER,
    ClusterOptions,
    ClusterState,
    LocalCluster,
    MinioInfo,
    stop_from_state,
)
from medcloud_cli.localcluster.postgres import PostgresInfo
from medcloud_cli.localcluster.process import pid_alive, port_is_free
from medcloud_cli.main import app as medcloud_cli
from tests.support import wait_for

pytestmark = pytest.mark.cluster


def test_deployment_becomes_available_on_kwok_nodes(k8s_api_client: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(k8s_api_client)
    core = client.CoreV1Api(k8s_api_client)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
                },
            },
        },
    )

    def available() -> bool:
        status = apps.read_namespaced_deployment_status("web", namespace).status
        return any(c.type == "Available" and c.status == "True" for c in status.conditions or []) and (
            status.ready_replicas == 2
        )

    wait_for(available, "the Deployment to become Available", timeout=120)
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 2
    nodes = {n.metadata.name: n for n in core.list_node().items}
    for pod in pods:
        assert pod.status.phase == "Running"
        node = nodes[pod.spec.node_name]
        assert node.metadata.annotations.get("kwok.x-k8s.io/node") == "fake"


def test_unprivileged_identity_is_refused_until_a_rolebinding_allows_it(
    local_cluster: LocalCluster, k8s_api_client: client.ApiClient, namespace: str
) -> None:
    user_api = config.new_client_from_config(config_file=str(local_cluster.user_kubeconfig))
    try:
        user_core = client.CoreV1Api(user_api)
        with pytest.raises(ApiException) as refused:
            user_core.list_namespaced_config_map(namespace)
        assert refused.value.status == 403
        assert UNPRIVILEGED_USER in refused.value.body

        rbac = client.RbacAuthorizationV1Api(k8s_api_client)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "read-configmaps"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "read-configmaps"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
                "subjects": [{"kind": "User", "name": UNPRIVILEGED_USER, "apiGroup": "rbac.authorization.k8s.io"}],
            },
        )
        # RBAC is read from an informer cache: the grant takes effect shortly after.
        wait_for(lambda: user_core.list_namespaced_config_map(namespace) is not None, "the RoleBinding to apply")
        with pytest.raises(ApiException) as still_refused:
            user_core.list_namespaced_secret(namespace)
        assert still_refused.value.status == 403
    finally:
        user_api.close()


def test_crd_schema_rejects_an_invalid_object(
    local_cluster: LocalCluster, k8s_api_client: client.ApiClient, namespace: str
) -> None:
    group = f"probe{uuid.uuid4().hex[:6]}.medcloud.test"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 10}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    ext = client.ApiextensionsV1Api(k8s_api_client)
    ext.create_custom_resource_definition(crd)
    try:
        wait_for(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(f"widgets.{group}").status.conditions or []
            ),
            "the CRD to be Established",
        )
        custom = client.CustomObjectsApi(k8s_api_client)
        body = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 42}}

        def create_rejected() -> ApiException | None:
            try:
                custom.create_namespaced_custom_object(group, "v1", namespace, "widgets", body)
            except ApiException as exc:
                # 404 while discovery of the new resource catches up.
                return exc if exc.status == 422 else None
            raise AssertionError("an invalid Widget was accepted")

        rejected = wait_for(create_rejected, "the invalid object to be rejected")
        assert "spec.size: Invalid value: 42: spec.size in body should be less than or equal to 10" in rejected.body
        body["spec"] = {"size": 3}
        created = custom.create_namespaced_custom_object(group, "v1", namespace, "widgets", body)
        assert created["spec"]["size"] == 3
    finally:
        ext.delete_custom_resource_definition(f"widgets.{group}")


def test_minio_put_get_and_object_lock(minio_server: MinioInfo) -> None:
    storage = Minio(
        minio_server.endpoint,
        access_key=minio_server.access_key,
        secret_key=minio_server.secret_key,
        secure=minio_server.secure,
    )
    bucket = f"probe-{uuid.uuid4().hex[:8]}"
    storage.make_bucket(bucket, object_lock=True)
    assert storage.get_object_lock_config(bucket) is not None
    payload = os.urandom(70_000)
    storage.put_object(bucket, "a/b.bin", io.BytesIO(payload), len(payload))
    response = storage.get_object(bucket, "a/b.bin")
    try:
        assert response.read() == payload
    finally:
        response.close()
        response.release_conn()
    import datetime as dt

    until = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=1)
    storage.put_object(bucket, "locked", io.BytesIO(b"x"), 1, retention=Retention(GOVERNANCE, until))
    stat = storage.stat_object(bucket, "locked")
    assert stat.metadata.get("x-amz-object-lock-mode") == "GOVERNANCE"


def _mqtt_client(broker: BrokerInfo, client_id: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    c.tls_set(
        ca_certs=broker.ca_file,
        certfile=broker.client_cert,
        keyfile=broker.client_key,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    return c


def test_mosquitto_tls_publish_and_receive(mqtt_broker: BrokerInfo) -> None:
    received: queue.Queue[bytes] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()
    topic = f"medcloud/test/{uuid.uuid4().hex[:8]}"

    subscriber = _mqtt_client(mqtt_broker, "subscriber")
    subscriber.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    subscriber.on_subscribe = lambda *_: subscribed.put(True)
    subscriber.on_message = lambda _c, _u, msg: received.put(bytes(msg.payload))
    subscriber.connect(mqtt_broker.host, mqtt_broker.port)
    subscriber.loop_start()
    publisher = _mqtt_client(mqtt_broker, "publisher")
    try:
        assert subscribed.get(timeout=30)
        publisher.connect(mqtt_broker.host, mqtt_broker.port)
        publisher.loop_start()
        publisher.publish(topic, b'{"spo2": 97}', qos=1).wait_for_publish(timeout=30)
        assert received.get(timeout=30) == b'{"spo2": 97}'
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        subscriber.loop_stop()
        subscriber.disconnect()


def _connects_without_certificate(broker: BrokerInfo) -> bool:
    anonymous = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="anon")
    anonymous.tls_set(ca_certs=broker.ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    try:
        anonymous.connect(broker.host, broker.port)
        # The CONNACK (or the broker closing the TLS session) arrives within a few reads.
        for _ in range(3):
            anonymous.loop(timeout=2)
    except (ssl.SSLError, OSError):
        return False
    return bool(anonymous.is_connected())


def test_broker_refuses_a_client_without_certificate(mqtt_broker: BrokerInfo) -> None:
    assert not _connects_without_certificate(mqtt_broker)


def test_start_and_stop_twice_leaves_nothing_behind(tmp_path: Path) -> None:
    for round_ in range(2):
        cluster = LocalCluster(tmp_path / f"round-{round_}", ClusterOptions(nodes=1))
        cluster.start()
        pids = [p.pid for p in cluster.processes if p.pid is not None]
        ports = cluster.held_ports()
        assert len(pids) == 9, [p.name for p in cluster.processes]  # the broker's sync is the ninth
        postgres = cluster.state.postgres if cluster.state else None
        assert postgres is not None
        assert Path(postgres.data_dir).is_dir()
        assert all(pid_alive(pid) for pid in pids)
        assert not any(port_is_free(port) for port in ports)
        cluster.stop()
        assert not any(pid_alive(pid) for pid in pids)
        assert all(port_is_free(port) for port in ports)
        assert not Path(postgres.data_dir).exists(), "a fresh data folder at every start, removed at stop"


def test_postgres_answers_on_loopback_with_a_password_and_runs_unprivileged(
    servers: LocalCluster, postgres_server: PostgresInfo
) -> None:
    import psycopg

    with psycopg.connect(postgres_server.dsn) as conn:
        row = conn.execute(
            "SELECT current_setting('listen_addresses'), current_setting('unix_socket_directories')"
        ).fetchone()
        assert row == ("127.0.0.1", "")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_server.dsn.replace(postgres_server.password, "wrong"), connect_timeout=5).close()
    server = next(p for p in servers.processes if p.name == "postgres")
    assert server.pid is not None
    owner = Path(f"/proc/{server.pid}").stat().st_uid
    assert owner != 0, "PostgreSQL never runs as root"


def test_a_second_dev_up_on_a_running_cluster_is_refused_and_keeps_its_record(servers: LocalCluster) -> None:
    state_file = servers.state_dir / LocalCluster.STATE_FILE
    recorded = state_file.read_text()

    result = CliRunner().invoke(medcloud_cli, ["dev", "up", "--no-real-node", "--state-dir", str(servers.state_dir)])

    assert result.exit_code == 1, result.output
    assert "a cluster already runs" in result.output
    assert state_file.read_text() == recorded
    assert all(p.running() for p in servers.processes)
    status = CliRunner().invoke(medcloud_cli, ["dev", "status", "--state-dir", str(servers.state_dir)])
    assert status.exit_code == 0, status.output
    assert "minio" in status.output


def test_dev_up_on_a_partly_running_cluster_starts_only_what_died(tmp_path: Path) -> None:
    state_dir = tmp_path / "dev"
    cluster = LocalCluster(state_dir, ClusterOptions(with_kubernetes=False, detach=True))
    state = cluster.start()
    try:
        assert state.minio is not None
        broker_pid = state.pids["mosquitto"]
        minio = next(p for p in cluster.processes if p.name == "minio")
        minio.stop(grace=2)
        assert not pid_alive(state.pids["minio"])

        result = CliRunner().invoke(medcloud_cli, ["dev", "up", "--no-real-node", "--state-dir", str(state_dir)])

        assert result.exit_code == 0, result.output
        assert "started again: minio" in result.output
        after = ClusterState.load(state_dir / LocalCluster.STATE_FILE)
        assert after.pids["mosquitto"] == broker_pid
        assert after.pids["minio"] != state.pids["minio"]
        assert pid_alive(after.pids["minio"])
        # The same endpoint and credentials as before: what was exported still works.
        store = Minio(state.minio.endpoint, state.minio.access_key, state.minio.secret_key, secure=False)
        wait_for(lambda: store.list_buckets() is not None, "MinIO to answer again")
        again = CliRunner().invoke(medcloud_cli, ["dev", "up", "--no-real-node", "--state-dir", str(state_dir)])
        assert again.exit_code == 1, again.output
        assert "a cluster already runs" in again.output
    finally:
        stop_from_state(state_dir)
