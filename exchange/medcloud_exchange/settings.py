"""The exchange's settings, read once at start from ``MEDCLOUD_EXCHANGE_*`` environment variables."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_AUDIENCE = "medcloud-exchange"
BLIND_INDEX_KEY_SIZE = 32


class ExchangeSettings(BaseSettings):
    """Everything a deployment of the exchange may tune; each field is ``MEDCLOUD_EXCHANGE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="MEDCLOUD_EXCHANGE_", extra="ignore")

    consortium: str = Field(description="Name of the Consortium this exchange serves.")
    kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig of the exchange's own identity. Unset: in-cluster, else $KUBECONFIG."
    )
    database_url: SecretStr = Field(description="PostgreSQL connection string (libpq URI) of the index database.")
    blind_index_key: SecretStr = Field(
        description="The consortium key of the patient blind index: 32 random bytes, base64. Never logged."
    )
    audit_endpoint: str = Field(description="S3 endpoint of the audit bucket, host:port.")
    audit_secure: bool = Field(default=True, description="Reach the audit endpoint over TLS.")
    audit_access_key: str = Field(description="Access key of the exchange's own audit user (put, get, list only).")
    audit_secret_key: SecretStr = Field(description="Secret key of that user.")
    audit_bucket: str = Field(description="The object-locked, versioned audit bucket.")
    key_service_url: str = Field(description="The key service that unwraps the members' data keys.")
    key_service_token_file: Path = Field(
        description="The exchange's token for the key service's audience (a projected token; read on every request)."
    )
    store: str = Field(default="emr", description="RecordStore of each publisher that holds exchanged documents.")
    audience: str = Field(default=DEFAULT_AUDIENCE, description="Audience callers' tokens must be issued for.")
    base_url: str = Field(default="", description="Public base URL; absolute links in answers use it when set.")
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(default=8090, ge=1, le=65535, description="Port the HTTP server listens on.")
    kube_timeout_seconds: float = Field(default=10.0, gt=0, description="Timeout of each Kubernetes API request.")
    data_key_ttl_seconds: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description=(
            "How long a member store's data key fetched from the key service is used before it is asked for "
            "again: a member dropped from spec.sharing (its key grant revoked) is unreadable within this bound."
        ),
    )
    database_timeout_seconds: float = Field(default=5.0, gt=0, description="Wait for a database connection at most.")
    retry_after_seconds: int = Field(default=5, ge=1, description="Retry-After of a 503 answer.")
    max_document_bytes: int = Field(default=20 * 1024 * 1024, gt=0, description="Largest document a publish takes.")

    @field_validator("blind_index_key")
    @classmethod
    def _key_is_32_bytes(cls, value: SecretStr) -> SecretStr:
        try:
            raw = base64.b64decode(value.get_secret_value(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("blind_index_key must be base64") from None
        if len(raw) != BLIND_INDEX_KEY_SIZE:
            raise ValueError(f"blind_index_key must be {BLIND_INDEX_KEY_SIZE} bytes, got {len(raw)}")
        return value

    def blind_key(self) -> bytes:
        return base64.b64decode(self.blind_index_key.get_secret_value())
