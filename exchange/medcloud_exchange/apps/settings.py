"""One settings object per app process: the environment the operator gives it, and its config files."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from medcloud.models import CatalogApp


class AppSettings(BaseSettings):
    """Read once at start from ``MEDCLOUD_*`` (set by the operator, builders/appinstance.py)."""

    model_config = SettingsConfigDict(env_prefix="MEDCLOUD_", extra="ignore")

    app: CatalogApp = Field(description="The catalog app this process is.")
    hospital: str = Field(min_length=1, description="The Hospital it acts for (X-MedCloud-Hospital).")
    http_port: int = Field(default=8080, ge=1, le=65535)
    host: str = Field(default="0.0.0.0", description="Address to bind.")  # noqa: S104 - a pod's own address
    config_dir: Path = Field(default=Path("/etc/medcloud/config"), description="spec.config, one file a key.")
    exchange_url: str = Field(
        min_length=1,
        description="The exchange's URL, FHIR at /fhir (the operator sets it from the Consortium's status).",
    )
    exchange_token_file: Path = Field(
        default=Path("/var/run/secrets/medcloud/exchange/token"),
        description="The app's projected token for the audience medcloud-exchange (re-read per call: it rotates).",
    )
    exchange_timeout_seconds: float = Field(default=30, gt=0)
    job_practitioner: str = Field(
        default="Practitioner/medcloud-desk",
        min_length=1,
        description="Who the app's own job acts for at the exchange (audited as the user).",
    )
    job_interval_seconds: float = Field(default=30, gt=0, description="How often the job runs.")

    def config(self, key: str) -> str | None:
        """One ``spec.config`` value (the operator writes each key as a file); None when absent."""
        path = self.config_dir / key
        return path.read_text().strip() if path.is_file() else None

    def exchange_base(self) -> str:
        """The exchange's FHIR base URL."""
        return f"{self.exchange_url.rstrip('/')}/fhir"
