"""The key service's settings, read from ``MEDCLOUD_KEYSERVICE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from medcloud.tenancy.credentials import KEY_SERVICE_AUDIENCE

DEFAULT_AUDIENCE = KEY_SERVICE_AUDIENCE


class KeyServiceSettings(BaseSettings):
    """Everything a deployment of the key service may tune; each field is ``MEDCLOUD_KEYSERVICE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="MEDCLOUD_KEYSERVICE_", extra="ignore")

    kubeconfig: Path | None = Field(
        default=None,
        description="Kubeconfig of the service's own identity. Unset: in-cluster service account, else $KUBECONFIG.",
    )
    operator_namespace: str = Field(
        default="medcloud-system", description="Where the KEK and key ring Secrets live (the operator's namespace)."
    )
    audience: str = Field(
        default=DEFAULT_AUDIENCE,
        description=(
            "Audience a caller's token must be issued for (a projected service account token with this "
            "audience). A token for the API server, or for another service, is refused: it cannot be replayed here."
        ),
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(default=8443, ge=1, le=65535, description="Port the HTTP server listens on.")
    tls_cert_file: Path | None = Field(default=None, description="Serving certificate; without it, plain HTTP.")
    tls_key_file: Path | None = Field(default=None, description="Key of the serving certificate.")
    kube_timeout_seconds: float = Field(default=10.0, gt=0, description="Timeout of each Kubernetes API request.")
