"""The platform broker's configuration and the sync's trust files (pure: text and files, no broker)."""

from __future__ import annotations

from pathlib import Path

from medcloud.tenancy import mqtt
from medcloud_cli.localcluster.broker import DEV_CLIENT, DEV_CLIENT_ACL, SYNC_USER, sync_rbac
from medcloud_gateway.broker import BrokerFiles, mosquitto_config
from medcloud_gateway.brokersync import FILES, write_trust_files

BUNDLE = {
    mqtt.CA_BUNDLE_KEY: "-----BEGIN CERTIFICATE-----\nhospital\n-----END CERTIFICATE-----\n",
    mqtt.CRL_BUNDLE_KEY: "-----BEGIN X509 CRL-----\nhospital\n-----END X509 CRL-----\n",
    mqtt.ACL_KEY: mqtt.acl([mqtt.GatewayGrant("gw-wards.hospital-city", "city")]),
}
EXTRA = {
    mqtt.CA_BUNDLE_KEY: "-----BEGIN CERTIFICATE-----\ncluster\n-----END CERTIFICATE-----\n",
    mqtt.CRL_BUNDLE_KEY: "-----BEGIN X509 CRL-----\ncluster\n-----END X509 CRL-----\n",
    mqtt.ACL_KEY: DEV_CLIENT_ACL,
}


def files(directory: Path) -> BrokerFiles:
    return BrokerFiles(
        directory / "ca", directory / "tls.crt", directory / "tls.key", directory / "crl", directory / "acl"
    )


def test_every_listener_requires_a_certificate_checked_against_the_crls() -> None:
    config = mosquitto_config(files(Path("/t")), hosts=["127.0.0.1", "10.89.0.1", "127.0.0.1"], port=8883)
    lines = config.splitlines()
    assert [line for line in lines if line.startswith("listener")] == [
        "listener 8883 127.0.0.1",
        "listener 8883 10.89.0.1",
    ]
    for setting in ("crlfile /t/crl", "require_certificate true", "use_identity_as_username true", "cafile /t/ca"):
        assert lines.count(setting) == 2, setting
    assert "allow_anonymous false" in lines
    assert "acl_file /t/acl" in lines
    assert not any(line.startswith("pid_file") for line in lines)
    assert "pid_file /run/b.pid" in mosquitto_config(
        files(Path("/t")), hosts=["::1"], port=1, pid_file=Path("/run/b.pid")
    )


def test_the_extras_come_first_in_every_file_and_a_second_write_changes_nothing(tmp_path: Path) -> None:
    assert write_trust_files(BUNDLE, tmp_path, EXTRA)
    for key, name in FILES.items():
        assert (tmp_path / name).read_text() == EXTRA[key] + BUNDLE[key]
    acl = (tmp_path / FILES[mqtt.ACL_KEY]).read_text()
    # The cluster's client block ends before the operator's first user line: Mosquitto reads blocks by user.
    assert acl.startswith(f"user {DEV_CLIENT}\ntopic readwrite #\ntopic readwrite $share/#\n\nuser gw-wards.")
    assert not write_trust_files(BUNDLE, tmp_path, EXTRA)
    assert list(tmp_path.glob(".*.tmp")) == []


def test_a_bundle_missing_a_key_writes_nothing(tmp_path: Path) -> None:
    partial = {k: v for k, v in BUNDLE.items() if k != mqtt.CRL_BUNDLE_KEY}
    assert not write_trust_files(partial, tmp_path, EXTRA)
    assert list(tmp_path.iterdir()) == []


def test_the_sync_may_get_the_trust_configmap_and_nothing_else() -> None:
    namespace, role, binding = sync_rbac("medcloud-system")
    assert namespace["kind"] == "Namespace"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [mqtt.TRUST_CONFIGMAP], "verbs": ["get"]}
    ]
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": SYNC_USER}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
