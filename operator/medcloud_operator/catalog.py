"""The consortium app catalog, and where the images of apps and device gateways come from.

Each of the six catalog apps (``medcloud.models.CatalogApp``) has one entry
saying how it runs: its HTTP port and health path, the compute it asks for,
and whether it needs a RecordStore, and, for the apps that are MedCloud's own
code (``exchange/medcloud_exchange/apps/``), the ``args`` its container runs
MedCloud's own image with (``MEDCLOUD_MEDCLOUD_IMAGE``): ``["app", "<app>"]``,
that is ``medcloud app <app>``. Such an app talks to its Consortium's exchange
as a ServiceAccount of its own (docs/operator.md). Any other app names a
version, and its image is ``<MEDCLOUD_APP_IMAGE_PREFIX>/<app>:<version>``.
Device gateways all run one image, ``<MEDCLOUD_GATEWAY_IMAGE>:<MEDCLOUD_GATEWAY_VERSION>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from medcloud.models import CatalogApp
from medcloud.models.appinstance import APPS_NEEDING_RECORD_STORE
from medcloud_operator.settings import WorkloadSettings


@dataclass(frozen=True)
class Compute:
    """CPU and memory as Kubernetes quantities."""

    cpu: str
    memory: str


@dataclass(frozen=True)
class CatalogEntry:
    """How one catalog app runs."""

    app: CatalogApp
    title: str
    requests: Compute
    limits: Compute
    port: int = 8080
    """The container's HTTP port; the app's Service publishes it on port 80."""
    health_path: str = "/healthz"
    args: tuple[str, ...] = ()
    """Non-empty: the app is MedCloud's own code, run as MedCloud's image with these args."""

    @property
    def own_code(self) -> bool:
        return bool(self.args)

    @property
    def needs_record_store(self) -> bool:
        """The app reads or writes patient records (the CRD also requires spec.recordStore for it)."""
        return self.app in APPS_NEEDING_RECORD_STORE


def _entry(
    app: CatalogApp, title: str, requests: tuple[str, str], limits: tuple[str, str], *, own_code: bool = True
) -> CatalogEntry:
    args = ("app", app.value) if own_code else ()
    return CatalogEntry(app=app, title=title, requests=Compute(*requests), limits=Compute(*limits), args=args)


# Sized for a county hospital; the operator lowers them to fit a smaller
# tenant's LimitRange (builders/workload.py), never raises them.
CATALOG: Mapping[CatalogApp, CatalogEntry] = MappingProxyType(
    {
        entry.app: entry
        for entry in (
            _entry(CatalogApp.EMR_SHARING, "EMR sharing", ("250m", "512Mi"), ("1", "1Gi"), own_code=False),
            _entry(CatalogApp.APPOINTMENTS, "Appointments", ("100m", "256Mi"), ("500m", "512Mi")),
            _entry(CatalogApp.REFERRALS, "Referrals", ("100m", "256Mi"), ("500m", "512Mi")),
            _entry(CatalogApp.REMOTE_CONSULTATION, "Remote consultation", ("250m", "512Mi"), ("1", "1Gi")),
            _entry(
                CatalogApp.EXAM_MUTUAL_RECOGNITION,
                "Exam-result mutual recognition",
                ("100m", "256Mi"),
                ("500m", "512Mi"),
            ),
            _entry(CatalogApp.INSURANCE_CARD, "Insurance card", ("100m", "128Mi"), ("250m", "256Mi")),
        )
    }
)


def image_tag(version: str) -> str:
    """A semver as an image tag: ``+`` (build metadata) is not allowed in tags and becomes ``_``, as Helm does."""
    return version.replace("+", "_")


def app_image(app: CatalogApp, version: str, settings: WorkloadSettings) -> str:
    """MedCloud's own image for an app of its own code; else the app's image under the prefix."""
    if CATALOG[app].own_code:
        return settings.medcloud_image
    return f"{settings.app_image_prefix.rstrip('/')}/{app.value}:{image_tag(version)}"


def gateway_image(settings: WorkloadSettings) -> str:
    return f"{settings.gateway_image}:{image_tag(settings.gateway_version)}"
