"""AppInstance: a consortium app from the catalog, deployed into a hospital's namespace (namespaced)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator

from medcloud.models.common import (
    PHASE_COLUMN,
    READY_COLUMN,
    CELRule,
    CRDInfo,
    DNS1123Subdomain,
    MedCloudModel,
    PrinterColumn,
    Resource,
    StatusBase,
    empty_default,
    immutable,
)

# semver.org's own regular expression, anchored; RE2 and Rust both accept it.
SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
CONFIG_KEY_PATTERN = r"^[A-Za-z0-9]([-._A-Za-z0-9]*[A-Za-z0-9])?$"
CONFIG_KEY_MAX = 253
_CONFIG_KEY_RE = re.compile(CONFIG_KEY_PATTERN)


class CatalogApp(StrEnum):
    """Apps of the consortium catalog."""

    EMR_SHARING = "emr-sharing"
    APPOINTMENTS = "appointments"
    REFERRALS = "referrals"
    REMOTE_CONSULTATION = "remote-consultation"
    EXAM_MUTUAL_RECOGNITION = "exam-mutual-recognition"
    INSURANCE_CARD = "insurance-card"


# Apps that read or write patient records cannot run without a store.
APPS_NEEDING_RECORD_STORE: tuple[CatalogApp, ...] = (
    CatalogApp.EMR_SHARING,
    CatalogApp.REFERRALS,
    CatalogApp.REMOTE_CONSULTATION,
    CatalogApp.EXAM_MUTUAL_RECOGNITION,
)
_APPS_NEEDING_RECORD_STORE_CEL = "[" + ", ".join(f"'{app.value}'" for app in APPS_NEEDING_RECORD_STORE) + "]"


class Exposure(MedCloudModel):
    """How the app is reached from outside the tenant namespace."""

    host: DNS1123Subdomain | None = Field(
        default=None,
        description="DNS name the app is published under, e.g. emr.city-general.med.example; none keeps it internal.",
    )


class AppInstanceSpec(MedCloudModel):
    """Desired state of an app instance."""

    cel_rules: ClassVar[tuple[CELRule, ...]] = (
        CELRule(
            rule=f"!(self.app in {_APPS_NEEDING_RECORD_STORE_CEL}) || has(self.recordStore)",
            message_expression=(
                "'spec.recordStore is required for app ' + self.app + ': it reads and writes patient records'"
            ),
            reason="FieldValueRequired",
            field_path=".recordStore",
        ),
    )

    app: Annotated[
        CatalogApp,
        Field(
            description=(
                "Catalog app to run: emr-sharing, appointments, referrals, remote-consultation, "
                "exam-mutual-recognition or insurance-card. Immutable."
            )
        ),
        immutable("app", "deploy another AppInstance to run a different app"),
    ]
    version: str = Field(
        max_length=64, pattern=SEMVER_PATTERN, description="Version of the app in the catalog, semver like 1.4.2."
    )
    replicas: int = Field(default=1, ge=0, le=20, description="Number of app pods, 0 to 20; 0 stops the app.")
    record_store: DNS1123Subdomain | None = Field(
        default=None,
        description=(
            "Name of the RecordStore in the same namespace the app uses. Required for emr-sharing, referrals, "
            "remote-consultation and exam-mutual-recognition."
        ),
    )
    device_gateway: DNS1123Subdomain | None = Field(
        default=None, description="Name of the DeviceGateway in the same namespace whose readings the app shows."
    )
    exposure: Exposure = Field(
        default_factory=Exposure,
        description="How the app is reached from outside the namespace.",
        json_schema_extra=empty_default(),
    )
    config: Annotated[
        dict[str, Annotated[str, Field(max_length=4096)]],
        CELRule(
            rule=f"self.all(k, size(k) <= {CONFIG_KEY_MAX} && k.matches('{CONFIG_KEY_PATTERN}'))",
            message=(
                "config keys must be letters, digits, '-', '_' or '.', start and end with a letter or digit, "
                f"and be at most {CONFIG_KEY_MAX} characters (like ConfigMap keys)"
            ),
        ),
    ] = Field(
        default_factory=dict,
        max_length=64,
        description="App settings passed to the app as-is, e.g. language: zh-CN.",
    )

    @field_validator("config")
    @classmethod
    def _config_keys(cls, config: dict[str, str]) -> dict[str, str]:
        bad = [k for k in config if len(k) > CONFIG_KEY_MAX or not _CONFIG_KEY_RE.match(k)]
        if bad:
            raise ValueError(f"invalid config keys: {', '.join(sorted(bad))}")
        return config

    @model_validator(mode="after")
    def _record_store_when_needed(self) -> Self:
        if self.app in APPS_NEEDING_RECORD_STORE and self.record_store is None:
            raise ValueError(f"spec.recordStore is required for app {self.app.value}")
        return self


class AppInstanceStatus(StatusBase):
    """Observed state of an app instance, written by the operator."""

    url: str | None = Field(default=None, description="URL the app is reachable at.")
    ready_replicas: int | None = Field(default=None, ge=0, description="App pods that are ready.")


class AppInstance(Resource):
    """A catalog app (EMR sharing, appointments, referrals, ...) wired to the hospital's store and gateway."""

    crd: ClassVar[CRDInfo] = CRDInfo(
        plural="appinstances",
        singular="appinstance",
        scope="Namespaced",
        short_names=("app",),
        printer_columns=(
            PrinterColumn("App", ".spec.app", description="Catalog app"),
            PrinterColumn("Version", ".spec.version", description="App version"),
            PrinterColumn("Replicas", ".spec.replicas", type="integer", description="Desired pods"),
            PrinterColumn("Available", ".status.readyReplicas", type="integer", description="Ready pods"),
            PHASE_COLUMN,
            READY_COLUMN,
            PrinterColumn("URL", ".status.url", description="Where the app is reachable", priority=1),
        ),
    )

    kind: Literal["AppInstance"] = Field(default="AppInstance", description="Kind of the object: AppInstance.")
    spec: AppInstanceSpec = Field(description="Desired state of the app instance.")
    status: AppInstanceStatus | None = Field(default=None, description="Observed state, written by the operator.")
