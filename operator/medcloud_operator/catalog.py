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


@dataclass(frozen=True)
class Size:
    """What an app asks for and what it may use at most."""

    requests: Compute
    limits: Compute


# Sized for a county hospital; the operator lowers them to fit a smaller
# tenant's LimitRange (builders/workload.py), never raises them.
SMALL = Size(Compute("100m", "128Mi"), Compute("250m", "256Mi"))
MEDIUM = Size(Compute("100m", "256Mi"), Compute("500m", "512Mi"))
LARGE = Size(Compute("250m", "512Mi"), Compute("1", "1Gi"))


def own_app(app: CatalogApp, title: str, size: Size, *, store_keys: bool = False) -> CatalogEntry:
    """An app with MedCloud's code (``medcloud app <app>``), a client of its consortium's exchange."""
    return CatalogEntry(
        app=app,
        title=title,
        requests=size.requests,
        limits=size.limits,
        args=("app", app.value),
        exchange_client=True,
        store_keys=store_keys,
    )


CATALOG: Mapping[CatalogApp, CatalogEntry] = MappingProxyType(
    {
        entry.app: entry
        for entry in (
            # The hospital-side connector of the consortium exchange (docs/emr-sharing.md); it reads
            # the EMR's documents from the store to publish them, hence its store keys.
            own_app(CatalogApp.EMR_SHARING, "EMR sharing", LARGE, store_keys=True),
            own_app(CatalogApp.APPOINTMENTS, "Appointments", MEDIUM),
            own_app(CatalogApp.REFERRALS, "Referrals", MEDIUM),
            own_app(CatalogApp.REMOTE_CONSULTATION, "Remote consultation", LARGE),
            own_app(CatalogApp.EXAM_MUTUAL_RECOGNITION, "Exam-result mutual recognition", MEDIUM),
            own_app(CatalogApp.INSURANCE_CARD, "Insurance card", SMALL),
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
