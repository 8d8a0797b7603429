"""Default onboarding profile of each tier: what a hospital gets when the caller names nothing.

A city hospital runs every layer; a village clinic a record store, a gateway
for home devices and the two apps that connect it to the hospitals above it.
Pure data and a pure function; the retention periods follow the usual rules
for medical records (inpatient records 30 years, outpatient and device
readings 15 years), always in COMPLIANCE mode: nobody can shorten them.
"""

from __future__ import annotations

from dataclasses import dataclass

from medcloud.models import (
    AppInstanceSpec,
    CatalogApp,
    DeviceClass,
    DeviceGatewaySpec,
    DeviceProtocol,
    HospitalQuota,
    RecordClass,
    RecordStoreSpec,
    Retention,
    RetentionMode,
    Tier,
)
from medcloud_api.schemas import AppRequest, DeviceGatewayRequest, RecordStoreRequest

CATALOG_VERSIONS: dict[CatalogApp, str] = {
    CatalogApp.EMR_SHARING: "2.3.1",
    CatalogApp.APPOINTMENTS: "4.1.0",
    CatalogApp.REFERRALS: "3.0.0",
    CatalogApp.REMOTE_CONSULTATION: "1.8.0",
    CatalogApp.EXAM_MUTUAL_RECOGNITION: "1.2.0",
    CatalogApp.INSURANCE_CARD: "1.0.4",
}
"""Current release of each catalog app, the version a profile deploys."""

INPATIENT_YEARS = "30y"
OUTPATIENT_YEARS = "15y"


@dataclass(frozen=True)
class Profile:
    quota: HospitalQuota
    record_stores: tuple[RecordStoreRequest, ...]
    device_gateways: tuple[DeviceGatewayRequest, ...]
    apps: tuple[AppRequest, ...]


def _store(record_class: RecordClass, period: str, quota: str) -> RecordStoreRequest:
    retention = Retention(mode=RetentionMode.COMPLIANCE, period=period)
    return RecordStoreRequest(
        name=record_class.value, spec=RecordStoreSpec(record_class=record_class, retention=retention, quota=quota)
    )


def _gateway(name: str, protocols: list[DeviceProtocol], classes: list[DeviceClass]) -> DeviceGatewayRequest:
    # Device readings go to their own store, apart from the EMR, as their
    # class decides who may share them (Consortium category device-data).
    spec = DeviceGatewaySpec(protocols=protocols, device_classes=classes, record_store=RecordClass.DEVICE_DATA.value)
    return DeviceGatewayRequest(name=name, spec=spec)


def _app(app: CatalogApp, record_store: str | None = None, device_gateway: str | None = None) -> AppRequest:
    spec = AppInstanceSpec(
        app=app, version=CATALOG_VERSIONS[app], record_store=record_store, device_gateway=device_gateway
    )
    return AppRequest(name=app.value, spec=spec)


EMR = RecordClass.EMR.value
IMAGING = RecordClass.IMAGING.value


def _hospital(quota: HospitalQuota, documents: bool) -> Profile:
    """City, county and district hospitals: inpatient care, imaging, wards full of monitors."""
    stores = [
        _store(RecordClass.EMR, INPATIENT_YEARS, "2Ti"),
        _store(RecordClass.IMAGING, INPATIENT_YEARS, "10Ti"),
        _store(RecordClass.DEVICE_DATA, OUTPATIENT_YEARS, "1Ti"),
    ]
    if documents:
        stores.append(_store(RecordClass.DOCUMENTS, INPATIENT_YEARS, "1Ti"))
    wards = _gateway(
        "wards",
        [DeviceProtocol.MQTT, DeviceProtocol.HL7V2],
        [DeviceClass.ECG, DeviceClass.BLOOD_PRESSURE, DeviceClass.SPO2, DeviceClass.TEMPERATURE, DeviceClass.GLUCOSE],
    )
    apps = [
        _app(CatalogApp.EMR_SHARING, EMR),
        _app(CatalogApp.APPOINTMENTS),
        _app(CatalogApp.REFERRALS, EMR),
        _app(CatalogApp.REMOTE_CONSULTATION, EMR, "wards"),
        _app(CatalogApp.EXAM_MUTUAL_RECOGNITION, IMAGING),
    ]
    if documents:
        apps.append(_app(CatalogApp.INSURANCE_CARD))
    return Profile(quota, tuple(stores), (wards,), tuple(apps))


def _clinic(quota: HospitalQuota, gateway: DeviceGatewayRequest, consultation: bool) -> Profile:
    """Township, community and village clinics: outpatient records, home and bedside devices, referrals up."""
    stores = (
        _store(RecordClass.EMR, INPATIENT_YEARS, "200Gi"),
        _store(RecordClass.DEVICE_DATA, OUTPATIENT_YEARS, "200Gi"),
    )
    apps = [_app(CatalogApp.APPOINTMENTS), _app(CatalogApp.REFERRALS, EMR)]
    if consultation:
        # Family doctors in a community consult city specialists over the patient's readings.
        apps.append(_app(CatalogApp.REMOTE_CONSULTATION, EMR, gateway.name))
    return Profile(quota, stores, (gateway,), tuple(apps))


def default_profile(tier: Tier) -> Profile:
    """The objects and quota a hospital of ``tier`` gets when the request names none."""
    match tier:
        case Tier.CITY:
            return _hospital(
                HospitalQuota(cpu="64", memory="256Gi", storage="10Ti", pods=1000, persistent_volume_claims=200),
                documents=True,
            )
        case Tier.COUNTY | Tier.DISTRICT:
            return _hospital(
                HospitalQuota(cpu="32", memory="128Gi", storage="4Ti", pods=500, persistent_volume_claims=100),
                documents=False,
            )
        case Tier.TOWNSHIP:
            clinic = _gateway(
                "clinic",
                [DeviceProtocol.HTTPS, DeviceProtocol.MQTT],
                [DeviceClass.BLOOD_PRESSURE, DeviceClass.GLUCOSE, DeviceClass.SPO2, DeviceClass.WEIGHT_SCALE],
            )
            return _clinic(
                HospitalQuota(cpu="8", memory="32Gi", storage="500Gi", pods=100, persistent_volume_claims=20),
                clinic,
                consultation=False,
            )
        case Tier.COMMUNITY:
            home = _gateway(
                "home-care",
                [DeviceProtocol.HTTPS, DeviceProtocol.MQTT],
                [DeviceClass.BLOOD_PRESSURE, DeviceClass.GLUCOSE, DeviceClass.SPO2, DeviceClass.WEARABLE],
            )
            return _clinic(
                HospitalQuota(cpu="8", memory="32Gi", storage="500Gi", pods=100, persistent_volume_claims=20),
                home,
                consultation=True,
            )
        case Tier.VILLAGE:
            home = _gateway(
                "home-care",
                [DeviceProtocol.HTTPS],
                [DeviceClass.BLOOD_PRESSURE, DeviceClass.GLUCOSE, DeviceClass.WEARABLE],
            )
            return _clinic(
                HospitalQuota(cpu="4", memory="16Gi", storage="200Gi", pods=50, persistent_volume_claims=10),
                home,
                consultation=False,
            )
