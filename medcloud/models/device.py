"""Device: one enrolled (or enrolling) medical device of a hospital, and its client certificate (namespaced).

The object's name is the device id: the subject CN of its certificate, the
``deviceId`` of its readings and its MQTT user. A device asks with a CSR
(``spec.csr``); someone RBAC lets ``approve`` devices sets ``spec.approved``
(through the control API, which checks that verb with a SubjectAccessReview);
the operator then signs it with the hospital's tenant CA and writes the
certificate into status. ``spec.revoked`` puts the serial in the CRL; it
cannot be undone (a device re-enrols under a new certificate instead).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from medcloud.models.common import (
    PHASE_COLUMN,
    READY_COLUMN,
    CELRule,
    CRDInfo,
    DNS1123Subdomain,
    MedCloudModel,
    Phase,
    PrinterColumn,
    Resource,
    StatusBase,
)
from medcloud.models.devicegateway import DeviceClass


class DeviceState(StrEnum):
    """Where a device is in its enrolment."""

    PENDING = "Pending"
    """Asked (a CSR is in spec), not approved yet."""
    ENROLLED = "Enrolled"
    """Approved and signed: the certificate in status is valid."""
    REVOKED = "Revoked"
    """Its certificate is in the hospital's CRL; every listener refuses it."""
    REFUSED = "Refused"
    """The CSR cannot be signed (status.message says why); a new Device must be made."""


class DeviceSpec(MedCloudModel):
    """What the device asks for, and the approver's and revoker's decisions."""

    cel_rules: ClassVar[tuple[CELRule, ...]] = (
        CELRule("!has(oldSelf.csr) || self.csr == oldSelf.csr", message="csr cannot change; enrol a new Device"),
        CELRule("!oldSelf.approved || self.approved", message="an approval cannot be withdrawn; revoke instead"),
        CELRule("!oldSelf.revoked || self.revoked", message="a revocation cannot be undone; enrol a new Device"),
    )

    gateway: DNS1123Subdomain = Field(description="The DeviceGateway in this namespace the device sends to.")
    device_class: DeviceClass = Field(description="Kind of device: ecg, blood-pressure, glucose, spo2, ...")
    owner: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._@:/-]*$",
        description="Who answers for the device: a ward, a team or a person (never a patient identifier).",
    )
    csr: str = Field(
        min_length=1,
        max_length=8192,
        description="PEM PKCS#10 certificate signing request; its subject CN must be the Device's name.",
    )
    approved: bool = Field(default=False, description="Set by an approver: the operator may sign the CSR.")
    revoked: bool = Field(default=False, description="Set by a revoker: the certificate goes into the CRL.")


PHASE_OF_STATE: dict[DeviceState, Phase] = {
    DeviceState.PENDING: Phase.PENDING,
    DeviceState.ENROLLED: Phase.READY,
    DeviceState.REVOKED: Phase.FAILED,
    DeviceState.REFUSED: Phase.FAILED,
}
"""The coarse phase every MedCloud kind shows; Ready is True only while Enrolled (its reason is the state)."""


class DeviceStatus(StatusBase):
    """The certificate the operator issued, and the device's enrolment state."""

    state: DeviceState | None = Field(default=None, description="Pending, Enrolled, Revoked or Refused.")
    serial: str | None = Field(default=None, description="The certificate's serial number (hex).")
    certificate: str | None = Field(default=None, description="The PEM client certificate (public).")
    not_after: datetime | None = Field(default=None, description="When the certificate expires.")
    revoked_at: datetime | None = Field(default=None, description="When the operator put the serial in the CRL.")
    message: str | None = Field(default=None, description="Why the state is what it is, in words.")


class Device(Resource):
    """A medical device of a hospital: enrolment request, approval, certificate, revocation."""

    crd: ClassVar[CRDInfo] = CRDInfo(
        plural="devices",
        singular="device",
        scope="Namespaced",
        short_names=("mdev",),
        printer_columns=(
            PrinterColumn("Gateway", ".spec.gateway", description="DeviceGateway it sends to"),
            PrinterColumn("Class", ".spec.deviceClass", description="Device class"),
            PrinterColumn("Owner", ".spec.owner", description="Who answers for the device"),
            PrinterColumn("State", ".status.state", description="Pending, Enrolled, Revoked or Refused"),
            PrinterColumn("Serial", ".status.serial", description="Certificate serial (hex)"),
            PHASE_COLUMN,
            READY_COLUMN,
            PrinterColumn("Expires", ".status.notAfter", type="date", description="Certificate expiry", priority=1),
        ),
    )

    kind: Literal["Device"] = Field(default="Device", description="Kind of the object: Device.")
    spec: DeviceSpec = Field(description="The device's request and the decisions on it.")
    status: DeviceStatus | None = Field(default=None, description="Observed state, written by the operator.")
