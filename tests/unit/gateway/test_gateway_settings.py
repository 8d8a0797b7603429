"""The gateway reads the environment its DeviceGateway's Deployment gives it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from medcloud.models import DeviceClass, DeviceGatewaySpec, DeviceProtocol
from medcloud_gateway.mqtt import device_of, subscription
from medcloud_gateway.settings import GatewaySettings
from medcloud_operator.builders.devicegateway import build_deployment
from medcloud_operator.builders.workload import Ceiling
from medcloud_operator.settings import WorkloadSettings

SECRET_ENV = {
    "COSI_S3_ENDPOINT": "https://minio.medcloud-system.svc:9000",
    "COSI_S3_BUCKET_ID": "city-hospital-inpatient",
    "COSI_S3_ACCESS_KEY_ID": "store-user",
    "COSI_S3_ACCESS_SECRET_KEY": "store-secret",
    "MEDCLOUD_KEY_SERVICE_URL": "https://keyservice.medcloud-system.svc:8443",
}
TLS_ENV = {
    "MEDCLOUD_GATEWAY_MQTT_CA_FILE": "/etc/medcloud/mqtt/ca.crt",
    "MEDCLOUD_GATEWAY_MQTT_CERT_FILE": "/etc/medcloud/mqtt/tls.crt",
    "MEDCLOUD_GATEWAY_MQTT_KEY_FILE": "/etc/medcloud/mqtt/tls.key",
}


def operator_env() -> dict[str, str]:
    """The literal env the operator's builder puts on the gateway container."""
    gateway: dict[str, Any] = {
        "apiVersion": "medcloud.io/v1alpha1",
        "kind": "DeviceGateway",
        "metadata": {"name": "ward", "namespace": "hospital-city", "uid": "u-1"},
    }
    spec = DeviceGatewaySpec.model_validate(
        {"protocols": ["mqtt", "hl7v2", "https"], "deviceClasses": ["spo2", "blood-pressure"], "recordStore": "vitals"}
    )
    deployment = build_deployment(gateway, spec, "vitals-credentials", Ceiling(), WorkloadSettings())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item["value"] for item in container["env"]}


def settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> GatewaySettings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return GatewaySettings()


def test_reads_what_the_operator_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    got = settings(monkeypatch, {**operator_env(), **SECRET_ENV, **TLS_ENV})
    assert got.namespace == "hospital-city"
    assert got.record_store == "vitals"
    assert set(got.protocols) == {DeviceProtocol.MQTT, DeviceProtocol.HL7V2, DeviceProtocol.HTTPS}
    assert set(got.device_classes) == {DeviceClass.SPO2, DeviceClass.BLOOD_PRESSURE}
    assert (got.health_port, got.https_port, got.hl7v2_port, got.mqtt_port) == (8080, 8443, 2575, 8883)
    assert got.bucket == "city-hospital-inpatient"
    assert got.secret_key.get_secret_value() == "store-secret"
    assert "store-secret" not in repr(got)
    assert got.broker_port == 8883  # by default the broker on the Service's MQTT port
    assert got.mqtt_ca_file == Path("/etc/medcloud/mqtt/ca.crt")


def test_mqtt_without_tls_files_is_refused_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="MEDCLOUD_GATEWAY_MQTT_CA_FILE, MEDCLOUD_GATEWAY_MQTT_CERT_FILE"):
        settings(monkeypatch, {**operator_env(), **SECRET_ENV})


def test_without_mqtt_no_broker_settings_are_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    got = settings(monkeypatch, {**operator_env(), **SECRET_ENV, "MEDCLOUD_GATEWAY_PROTOCOLS": "https,hl7v2"})
    assert got.protocols == [DeviceProtocol.HTTPS, DeviceProtocol.HL7V2]


def test_unknown_protocol_or_zone_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="MEDCLOUD_GATEWAY_PROTOCOLS"):
        settings(monkeypatch, {**operator_env(), **SECRET_ENV, "MEDCLOUD_GATEWAY_PROTOCOLS": "https,smoke-signals"})
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        settings(
            monkeypatch,
            {**operator_env(), **SECRET_ENV, **TLS_ENV, "MEDCLOUD_GATEWAY_HL7_TIMEZONE": "Mars/Olympus"},
        )


@pytest.mark.parametrize(
    ("topic", "device"),
    [
        ("devices/city/spo2-7/readings", "spo2-7"),
        ("devices/city/spo2-7/errors", None),
        ("devices/city/a b/readings", None),
        ("devices/county/spo2-7/readings", None),
        ("devices/spo2-7/readings", None),
        ("devices/city/x/y/readings", None),
    ],
)
def test_device_id_comes_from_the_hospitals_readings_topic(topic: str, device: str | None) -> None:
    assert device_of(topic, "city") == device


def test_replicas_share_one_subscription_of_their_hospitals_topics() -> None:
    assert subscription("city", "medcloud-gateway") == "$share/medcloud-gateway/devices/city/+/readings"
    assert subscription("city", "") == "devices/city/+/readings"


def test_code_mappings_reach_the_gateway_as_the_operator_writes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway: dict[str, Any] = {
        "apiVersion": "medcloud.io/v1alpha1",
        "kind": "DeviceGateway",
        "metadata": {"name": "ward", "namespace": "hospital-city", "uid": "u-1"},
    }
    spec = DeviceGatewaySpec.model_validate(
        {
            "protocols": ["hl7v2"],
            "deviceClasses": ["spo2"],
            "recordStore": "vitals",
            "codeMappings": [{"system": "EHC", "code": "327680", "mdc": 150456}],
        }
    )
    deployment = build_deployment(gateway, spec, "vitals-credentials", Ceiling(), WorkloadSettings())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    got = settings(monkeypatch, {**env, **SECRET_ENV})
    assert [(m.system, m.code, m.mdc) for m in got.code_mappings] == [("EHC", "327680", 150456)]
    assert "MEDCLOUD_GATEWAY_CODE_MAPPINGS" not in operator_env()  # no mappings, no variable: manifests unchanged


def test_device_certificates_need_the_crl_and_a_serving_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    # The operator's env sets all of them (tests/unit/operator/test_device_builders.py); here one at a time.
    tls = {"MEDCLOUD_GATEWAY_DEVICE_CA_FILE", "MEDCLOUD_GATEWAY_DEVICE_CRL_FILE", "MEDCLOUD_GATEWAY_HL7V2_TLS"}
    tls |= {"MEDCLOUD_GATEWAY_TLS_CERT_FILE", "MEDCLOUD_GATEWAY_TLS_KEY_FILE"}
    without = {k: v for k, v in operator_env().items() if k not in tls}
    base = {**without, **SECRET_ENV, "MEDCLOUD_GATEWAY_PROTOCOLS": "https,hl7v2"}
    with pytest.raises(ValidationError, match="MEDCLOUD_GATEWAY_DEVICE_CA_FILE needs MEDCLOUD_GATEWAY_DEVICE_CRL_FILE"):
        settings(monkeypatch, {**base, "MEDCLOUD_GATEWAY_DEVICE_CA_FILE": "/etc/medcloud/devices/ca.crt"})
    monkeypatch.delenv("MEDCLOUD_GATEWAY_DEVICE_CA_FILE")
    with pytest.raises(ValidationError, match="MEDCLOUD_GATEWAY_HL7V2_TLS needs MEDCLOUD_GATEWAY_DEVICE_CA_FILE"):
        settings(monkeypatch, {**base, "MEDCLOUD_GATEWAY_HL7V2_TLS": "true"})
