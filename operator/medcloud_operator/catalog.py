"""The consortium app catalog, and where the images of apps and device gateways come from.

Each of the six catalog apps (``medcloud.models.CatalogApp``) has one entry
saying how it runs: its HTTP port and health path, the compute it asks for,
and whether it needs a RecordStore. An AppInstance names an app and a
version; the image is ``<MEDCLOUD_APP_IMAGE_PREFIX>/<app>:<version>``, for the
apps listed in ``MEDCLOUD_PUBLISHED_APPS`` only: an AppInstance of another app
is refused rather than given pods whose image exists nowhere.
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
    """MedCloud's own code: the app runs MedCloud's image (``MEDCLOUD_OWN_IMAGE``) as ``medcloud <args>``,
    e.g. ``("app", "emr-sharing")``. Empty: the app's image is ``<MEDCLOUD_APP_IMAGE_PREFIX>/<app>:<version>``."""
    exchange_client: bool = False
    """The app calls its consortium's exchange: it gets ``MEDCLOUD_EXCHANGE_URL`` (from the Consortium's
    status) and projected tokens for the exchange and the key service (docs/catalog.md)."""
    store_keys: bool = False
    """The app decrypts records of its RecordStore itself: the operator grants its identity ``get`` on
    ``recordstores/keys`` of that one store (a Role with ``resourceNames``, bound to the app's account)."""

    @property
    def needs_record_store(self) -> bool:
        """The app reads or writes patient records (the CRD also requires spec.recordStore for it)."""
        return self.app in APPS_NEEDING_RECORD_STORE


def _entry(
    app: CatalogApp,
    title: str,
    requests: tuple[str, str],
    limits: tuple[str, str],
    *,
    args: tuple[str, ...] = (),
    exchange_client: bool = False,
    store_keys: bool = False,
) -> CatalogEntry:
    return CatalogEntry(
        app=app,
        title=title,
        requests=Compute(*requests),
        limits=Compute(*limits),
        args=args,
        exchange_client=exchange_client,
        store_keys=store_keys,
    )


# Sized for a county hospital; the operator lowers them to fit a smaller
# tenant's LimitRange (builders/workload.py), never raises them.
CATALOG: Mapping[CatalogApp, CatalogEntry] = MappingProxyType(
    {
        entry.app: entry
        for entry in (
            # The hospital-side connector of the consortium exchange (docs/emr-sharing.md).
            _entry(
                CatalogApp.EMR_SHARING,
                "EMR sharing",
                ("250m", "512Mi"),
                ("1", "1Gi"),
                args=("app", "emr-sharing"),
                exchange_client=True,
                # It reads the EMR's documents from the store to publish them.
                store_keys=True,
            ),
            _entry(
                CatalogApp.APPOINTMENTS,
                "Appointments",
                ("100m", "256Mi"),
                ("500m", "512Mi"),
                args=("app", "appointments"),
                exchange_client=True,
            ),
            _entry(
                CatalogApp.REFERRALS,
                "Referrals",
                ("100m", "256Mi"),
                ("500m", "512Mi"),
                args=("app", "referrals"),
                exchange_client=True,
            ),
            _entry(
                CatalogApp.REMOTE_CONSULTATION,
                "Remote consultation",
                ("250m", "512Mi"),
                ("1", "1Gi"),
                args=("app", "remote-consultation"),
                exchange_client=True,
            ),
            _entry(
                CatalogApp.EXAM_MUTUAL_RECOGNITION,
                "Exam-result mutual recognition",
                ("100m", "256Mi"),
                ("500m", "512Mi"),
                args=("app", "exam-mutual-recognition"),
                exchange_client=True,
            ),
            _entry(
                CatalogApp.INSURANCE_CARD,
                "Insurance card",
                ("100m", "128Mi"),
                ("250m", "256Mi"),
                args=("app", "insurance-card"),
                exchange_client=True,
            ),
        )
    }
)


def image_tag(version: str) -> str:
    """A semver as an image tag: ``+`` (build metadata) is not allowed in tags and becomes ``_``, as Helm does."""
    return version.replace("+", "_")


class AppWithoutImageError(Exception):
    """The catalog app has no published image in this installation; it cannot run until one is."""


def require_published(app: CatalogApp, settings: WorkloadSettings) -> None:
    """Refuse an app with no image: neither MedCloud's own code nor listed in ``settings.published_apps``."""
    if CATALOG[app].args or app in settings.published_apps:
        return
    runnable = {a for a, entry in CATALOG.items() if entry.args} | set(settings.published_apps)
    raise AppWithoutImageError(
        f"the catalog app {app.value} has no published image in this installation "
        f"(runnable: {', '.join(sorted(a.value for a in runnable)) or 'none'}); it cannot run until its image is "
        "pushed under MEDCLOUD_APP_IMAGE_PREFIX and listed in MEDCLOUD_PUBLISHED_APPS"
    )


def app_image(app: CatalogApp, version: str, settings: WorkloadSettings) -> str:
    """MedCloud's own image for an app with MedCloud's code, else the app's image at its version."""
    if CATALOG[app].args:
        return settings.own_image
    return f"{settings.app_image_prefix.rstrip('/')}/{app.value}:{image_tag(version)}"


def gateway_image(settings: WorkloadSettings) -> str:
    return f"{settings.gateway_image}:{image_tag(settings.gateway_version)}"
