"""The control API's settings, read from ``MEDCLOUD_API_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class APISettings(BaseSettings):
    """Everything a deployment of the API may tune; each field is ``MEDCLOUD_API_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MEDCLOUD_API_", extra="ignore")

    kubeconfig: Path | None = Field(
        default=None,
        description=(
            "Kubeconfig of the API's own identity. Unset: the in-cluster service account when running in a pod, "
            "otherwise $KUBECONFIG or ~/.kube/config."
        ),
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port the HTTP server listens on.")
    token_audiences: list[str] = Field(
        default_factory=list,
        description=(
            "Audiences a caller's token must be issued for (TokenReview spec.audiences); empty: the API "
            "server's own audiences, which is what `kubectl create token` issues."
        ),
    )
    kube_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Timeout of each request to the Kubernetes API."
    )
    namespace_wait_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "How long onboarding waits for the operator to create the tenant namespace before it rolls back "
            "and answers 503."
        ),
    )
    events_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Default lifetime of a progress stream that never sees Ready or failure."
    )
    events_max_timeout_seconds: float = Field(
        default=3600.0, gt=0, description="Longest progress stream a caller may ask for."
    )
    events_heartbeat_seconds: float = Field(
        default=15.0,
        gt=0,
        description="Interval of SSE comments on a quiet stream, so proxies do not close it as idle.",
    )
    list_scan_limit: int = Field(
        default=1000,
        ge=1,
        description=(
            "Most hospitals one list request examines while filtering; past it the page ends early with a "
            "continue token, so a filter matching little never turns one request into a full scan."
        ),
    )
    analytics_endpoint: str | None = Field(
        default=None,
        description="MinIO host:port of the analytics bucket the dashboard reads; unset: no dashboard (503).",
    )
    analytics_bucket: str = Field(default="analytics", description="The analytics bucket.")
    analytics_access_key: str | None = Field(default=None, description="A read-only key of the analytics bucket.")
    analytics_secret_key: SecretStr | None = Field(default=None, description="Its secret.")
    analytics_secure: bool = Field(default=False, description="TLS to the analytics MinIO.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")

    def in_cluster(self) -> bool:
        """True when no kubeconfig is configured and the process runs in a pod."""
        return self.kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ
