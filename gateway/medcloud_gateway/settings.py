"""The gateway's settings, from the environment its DeviceGateway's Deployment gives it.

Names the operator sets (``operator/medcloud_operator/builders/devicegateway.py``):
``MEDCLOUD_HOSPITAL``, ``MEDCLOUD_NAMESPACE``, ``MEDCLOUD_RECORDSTORE``,
``MEDCLOUD_GATEWAY_PROTOCOLS``, ``MEDCLOUD_GATEWAY_DEVICE_CLASSES``,
``MEDCLOUD_GATEWAY_HEALTH_PORT`` and ``MEDCLOUD_GATEWAY_<PROTOCOL>_PORT``, the key
service token file, the device CA, CRL and serving certificate files, the broker's
address, client certificate and share group (when the operator is given the broker's
CA), plus the RecordStore's credentials Secret as env (``COSI_S3_*``,
``COSI_CERTIFICATE_AUTHORITY``, ``MEDCLOUD_KEY_SERVICE_URL``); see docs/gateway.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from medcloud.models import CodeMapping, DeviceClass, DeviceProtocol
from medcloud.tenancy import gateway as gateway_env
from medcloud.tenancy.credentials import ACCESS_KEY_FIELD, KEY_SERVICE_URL_FIELD, SECRET_KEY_FIELD

DEFAULT_TOKEN_FILE = Path(gateway_env.DEFAULT_KEY_SERVICE_TOKEN_FILE)


def _split(value: Any) -> Any:
    # The operator writes comma-separated lists ("hl7v2,https,mqtt"), not JSON.
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    hospital: str = Field(validation_alias=gateway_env.HOSPITAL, description="The tenant (Hospital) name.")
    namespace: str = Field(validation_alias=gateway_env.NAMESPACE, description="The hospital's namespace.")
    record_store: str = Field(validation_alias=gateway_env.RECORD_STORE, description="RecordStore receiving readings.")
    protocols: Annotated[list[DeviceProtocol], NoDecode] = Field(
        default_factory=lambda: list(DeviceProtocol), validation_alias=gateway_env.PROTOCOLS, min_length=1
    )
    device_classes: Annotated[list[DeviceClass], NoDecode] = Field(
        default_factory=lambda: list(DeviceClass), validation_alias=gateway_env.DEVICE_CLASSES, min_length=1
    )
    # Every address in the pod: the Service forwards to the pod IP.
    host: str = Field(default="0.0.0.0", validation_alias="MEDCLOUD_GATEWAY_HOST")  # noqa: S104
    health_port: int = Field(default=8080, ge=1, le=65535, validation_alias=gateway_env.HEALTH_PORT)
    mqtt_port: int = Field(default=8883, ge=1, le=65535, validation_alias=gateway_env.PORT[DeviceProtocol.MQTT])
    https_port: int = Field(default=8443, ge=1, le=65535, validation_alias=gateway_env.PORT[DeviceProtocol.HTTPS])
    hl7v2_port: int = Field(default=2575, ge=1, le=65535, validation_alias=gateway_env.PORT[DeviceProtocol.HL7V2])

    # The RecordStore's credentials Secret (COSI keys).
    s3_endpoint: str = Field(validation_alias="COSI_S3_ENDPOINT")
    bucket: str = Field(validation_alias="COSI_S3_BUCKET_ID")
    access_key: str = Field(validation_alias=ACCESS_KEY_FIELD)
    secret_key: SecretStr = Field(validation_alias=SECRET_KEY_FIELD)
    s3_ca_pem: str | None = Field(default=None, validation_alias="COSI_CERTIFICATE_AUTHORITY")
    key_service_url: str | None = Field(default=None, validation_alias=KEY_SERVICE_URL_FIELD)
    key_service_token_file: Path = Field(
        default=DEFAULT_TOKEN_FILE, validation_alias=gateway_env.KEY_SERVICE_TOKEN_FILE
    )
    key_service_ca_file: Path | None = Field(default=None, validation_alias="MEDCLOUD_GATEWAY_KEY_SERVICE_CA_FILE")

    # MQTT: the broker devices publish to. By default one in the pod, on the Service's MQTT port.
    mqtt_broker_host: str = Field(default="127.0.0.1", validation_alias=gateway_env.BROKER_HOST)
    mqtt_broker_port: int | None = Field(default=None, ge=1, le=65535, validation_alias=gateway_env.BROKER_PORT)
    mqtt_ca_file: Path | None = Field(default=None, validation_alias=gateway_env.MQTT_CA_FILE)
    mqtt_cert_file: Path | None = Field(default=None, validation_alias=gateway_env.MQTT_CERT_FILE)
    mqtt_key_file: Path | None = Field(default=None, validation_alias=gateway_env.MQTT_KEY_FILE)
    mqtt_client_id: str | None = Field(default=None, validation_alias="MEDCLOUD_GATEWAY_MQTT_CLIENT_ID")
    mqtt_share_group: str = Field(default="medcloud-gateway", validation_alias=gateway_env.MQTT_SHARE_GROUP)
    mqtt_publish_errors: bool = Field(default=True, validation_alias="MEDCLOUD_GATEWAY_MQTT_PUBLISH_ERRORS")

    # HTTPS: without a certificate the readings port speaks plain HTTP (local development only).
    tls_cert_file: Path | None = Field(default=None, validation_alias=gateway_env.TLS_CERT_FILE)
    tls_key_file: Path | None = Field(default=None, validation_alias=gateway_env.TLS_KEY_FILE)

    # Device identity: a client certificate of the hospital's device CA, checked against the CRL, on HTTPS and
    # (with hl7v2_tls) MLLP. Unset: listeners authenticate nobody (local development only).
    device_ca_file: Path | None = Field(default=None, validation_alias=gateway_env.DEVICE_CA_FILE)
    device_crl_file: Path | None = Field(default=None, validation_alias=gateway_env.DEVICE_CRL_FILE)
    crl_reload_seconds: float = Field(default=10.0, gt=0, le=300, validation_alias=gateway_env.CRL_RELOAD_SECONDS)
    hl7v2_tls: bool = Field(default=False, validation_alias=gateway_env.HL7V2_TLS)
    # A device is Online up to online_seconds after its last stored reading, Stale up to offline_seconds, then Offline.
    online_seconds: float = Field(default=300, gt=0, validation_alias="MEDCLOUD_GATEWAY_ONLINE_SECONDS")
    offline_seconds: float = Field(default=3600, gt=0, validation_alias="MEDCLOUD_GATEWAY_OFFLINE_SECONDS")

    hl7_timezone: str | None = Field(
        default=None,
        validation_alias="MEDCLOUD_GATEWAY_HL7_TIMEZONE",
        description="IANA zone for HL7 times without an offset (e.g. Asia/Shanghai); unset: such times are refused.",
    )
    log_level: str = Field(default="info", validation_alias="MEDCLOUD_GATEWAY_LOG_LEVEL")
    code_mappings: list[CodeMapping] = Field(
        default_factory=list,
        validation_alias=gateway_env.CODE_MAPPINGS,
        description="JSON list of {system, code, mdc}: vendor observation codes and the MDC codes they mean.",
    )

    _split_protocols = field_validator("protocols", "device_classes", mode="before")(_split)

    @field_validator("hl7_timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}") from None
        return value or None

    @model_validator(mode="after")
    def _complete(self) -> GatewaySettings:
        if DeviceProtocol.MQTT in self.protocols:
            missing = [
                name
                for name, value in (
                    ("MEDCLOUD_GATEWAY_MQTT_CA_FILE", self.mqtt_ca_file),
                    ("MEDCLOUD_GATEWAY_MQTT_CERT_FILE", self.mqtt_cert_file),
                    ("MEDCLOUD_GATEWAY_MQTT_KEY_FILE", self.mqtt_key_file),
                )
                if value is None
            ]
            if missing:
                raise ValueError(f"mqtt is enabled but {', '.join(missing)} not set (the broker needs TLS)")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both MEDCLOUD_GATEWAY_TLS_CERT_FILE and MEDCLOUD_GATEWAY_TLS_KEY_FILE, or neither")
        if self.device_ca_file is not None and (self.device_crl_file is None or self.tls_cert_file is None):
            raise ValueError(
                "MEDCLOUD_GATEWAY_DEVICE_CA_FILE needs MEDCLOUD_GATEWAY_DEVICE_CRL_FILE and the serving certificate "
                "(MEDCLOUD_GATEWAY_TLS_CERT_FILE, _KEY_FILE)"
            )
        if self.online_seconds > self.offline_seconds:
            raise ValueError("MEDCLOUD_GATEWAY_ONLINE_SECONDS must not exceed MEDCLOUD_GATEWAY_OFFLINE_SECONDS")
        if self.hl7v2_tls and self.device_ca_file is None:
            raise ValueError("MEDCLOUD_GATEWAY_HL7V2_TLS needs MEDCLOUD_GATEWAY_DEVICE_CA_FILE (client certificates)")
        return self

    @property
    def broker_port(self) -> int:
        return self.mqtt_broker_port or self.mqtt_port

    @property
    def local_zone(self) -> ZoneInfo | None:
        return ZoneInfo(self.hl7_timezone) if self.hl7_timezone else None
