"""DeviceGateway: the terminal layer, where bedside and home devices deliver readings (namespaced)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from medcloud.models.common import (
    PHASE_COLUMN,
    READY_COLUMN,
    CRDInfo,
    DNS1123Subdomain,
    MedCloudModel,
    PrinterColumn,
    Resource,
    ResourceRequirements,
    StatusBase,
    empty_default,
    unique_items,
)


class DeviceProtocol(StrEnum):
    """Transport a device uses to deliver readings."""

    MQTT = "mqtt"
    HTTPS = "https"
    HL7V2 = "hl7v2"


class DeviceClass(StrEnum):
    """Kind of device; it decides how readings map to FHIR Observations (LOINC code, UCUM unit)."""

    ECG = "ecg"
    BLOOD_PRESSURE = "blood-pressure"
    GLUCOSE = "glucose"
    SPO2 = "spo2"
    WEARABLE = "wearable"
    TEMPERATURE = "temperature"
    WEIGHT_SCALE = "weight-scale"


class CodeMapping(MedCloudModel):
    """A vendor's private observation code, and the IEEE 11073 (MDC) code it means."""

    system: str = Field(
        min_length=1,
        max_length=32,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The coding system as the device sends it in OBX-3.3, e.g. 99PHILIPS or EHC.",
    )
    code: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="The vendor's code in OBX-3.1."
    )
    mdc: int = Field(
        ge=1,
        le=2**32 - 1,
        description="The MDC code (IEEE 11073-10101, e.g. 150456 for SpO2) the gateway must read it as.",
    )


class DeviceGatewaySpec(MedCloudModel):
    """Desired state of a device gateway."""

    protocols: list[DeviceProtocol] = Field(
        min_length=1,
        max_length=3,
        description="Protocols the gateway accepts readings on: mqtt, https and/or hl7v2 (MLLP). At least one.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    device_classes: list[DeviceClass] = Field(
        min_length=1,
        max_length=16,
        description=(
            "Device classes the gateway enrolls: ecg, blood-pressure, glucose, spo2, wearable, temperature, "
            "weight-scale."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    record_store: DNS1123Subdomain = Field(
        description="Name of the RecordStore in the same namespace that receives the normalised readings."
    )
    replicas: int = Field(default=1, ge=1, le=10, description="Number of gateway pods, 1 to 10.")
    code_mappings: list[CodeMapping] = Field(
        default_factory=list,
        max_length=512,
        description=(
            "Vendor observation codes and the MDC codes they mean, for devices that send private codes. "
            "Codes neither in MDC as the gateway knows it nor here are refused, naming the code."
        ),
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="CPU and memory of each gateway pod.",
        json_schema_extra=empty_default(),
    )

    @field_validator("protocols", "device_classes")
    @classmethod
    def _no_duplicates(cls, values: list[StrEnum]) -> list[StrEnum]:
        return unique_items(values)


class DeviceCounts(MedCloudModel):
    """Devices known to the gateway."""

    enrolled: int = Field(default=0, ge=0, description="Devices (Device objects) that hold a valid client certificate.")
    revoked: int = Field(default=0, ge=0, description="Devices whose certificate has been revoked.")
    pending: int = Field(default=0, ge=0, description="Devices that asked to enrol and wait for an approver.")
    active: int | None = Field(
        default=None,
        ge=0,
        description="Enrolled devices that sent a reading recently (the gateway's presence); unset until reported.",
    )


class DeviceGatewayStatus(StatusBase):
    """Observed state of a device gateway, written by the operator."""

    endpoints: dict[str, str] = Field(
        default_factory=dict,
        description="Where devices connect, by protocol, e.g. mqtt: mqtts://gw.hospital-x.svc:8883.",
    )
    devices: DeviceCounts | None = Field(default=None, description="Device enrollment counts.")


class DeviceGateway(Resource):
    """A gateway that enrolls medical devices and turns their readings into encrypted FHIR Observations."""

    crd: ClassVar[CRDInfo] = CRDInfo(
        plural="devicegateways",
        singular="devicegateway",
        scope="Namespaced",
        short_names=("dgw",),
        printer_columns=(
            PrinterColumn("Protocols", ".spec.protocols", description="Accepted protocols"),
            PrinterColumn("Store", ".spec.recordStore", description="Target RecordStore"),
            PrinterColumn("Replicas", ".spec.replicas", type="integer", description="Gateway pods"),
            PrinterColumn("Enrolled", ".status.devices.enrolled", type="integer", description="Enrolled devices"),
            PHASE_COLUMN,
            READY_COLUMN,
            PrinterColumn("Active", ".status.devices.active", type="integer", description="Active devices", priority=1),
            PrinterColumn("Revoked", ".status.devices.revoked", type="integer", description="Revoked", priority=1),
        ),
    )

    kind: Literal["DeviceGateway"] = Field(default="DeviceGateway", description="Kind of the object: DeviceGateway.")
    spec: DeviceGatewaySpec = Field(description="Desired state of the device gateway.")
    status: DeviceGatewayStatus | None = Field(default=None, description="Observed state, written by the operator.")
