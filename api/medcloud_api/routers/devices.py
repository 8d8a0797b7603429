"""Devices of a hospital: enrolment (a CSR), approval, the issued certificate, revocation.

A device (or whoever installs it) posts a CSR; it becomes a Device object,
Pending. Someone the cluster's RBAC lets ``approve`` devices in the
hospital's namespace approves it; the operator signs it with the hospital's
tenant CA and the certificate appears here. ``revoke`` puts it into the CRL
every listener checks. ``approve`` and ``revoke`` are custom verbs on
``devices.medcloud.io``, asked with a SubjectAccessReview; hospital
administrators hold them (the tenant admin Role), and nobody but this API
may patch a Device's spec, so each decision is made here and names its maker.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from kubernetes.client.exceptions import ApiException
from pydantic import Field

from medcloud.auth import Caller
from medcloud.kube.client import Manifest
from medcloud.models import Device, DeviceClass, DeviceGateway, DeviceSpec, DeviceState, DeviceStatus
from medcloud.models.common import (
    DNS1123_LABEL_PATTERN,
    DNS1123_SUBDOMAIN_PATTERN,
    HOSPITAL_NAME_MAX,
    hospital_namespace,
)
from medcloud.tenancy import deviceca, labels
from medcloud_api import problems
from medcloud_api.deps import Authorizer, Authz, CurrentUser, KubeDep, current_user
from medcloud_api.kube import Kube
from medcloud_api.problems import FieldError, ProblemError, invalid_request, not_found
from medcloud_api.schemas import APIModel

router = APIRouter(prefix="/v1/hospitals/{hospital}/devices", tags=["devices"], dependencies=[Depends(current_user)])

APPROVED_BY = "medcloud.io/approved-by"
REVOKED_BY = "medcloud.io/revoked-by"
"""Annotations on a Device: the user (as the cluster authenticated them) who approved or revoked it."""

HospitalParam = Annotated[
    str, Path(min_length=1, max_length=HOSPITAL_NAME_MAX, pattern=DNS1123_LABEL_PATTERN, description="The Hospital.")
]
DeviceParam = Annotated[
    str,
    Path(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN_PATTERN, description="The device id (Device name)."),
]


class EnrolmentRequest(APIModel):
    """A device's request for a client certificate."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        description="The device id: the CSR's subject CN, the readings' deviceId, the MQTT user.",
    )
    gateway: str = Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN_PATTERN)
    device_class: DeviceClass
    owner: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._@:/-]*$")
    csr: str = Field(min_length=1, max_length=deviceca.MAX_CSR_BYTES, description="PEM PKCS#10 CSR.")


class DeviceView(APIModel):
    name: str
    gateway: str
    device_class: str
    owner: str
    state: DeviceState
    serial: str | None = None
    not_after: datetime | None = None
    certificate: str | None = Field(default=None, description="PEM client certificate, once Enrolled.")
    message: str | None = None
    approved_by: str | None = None
    revoked_by: str | None = None


class DeviceList(APIModel):
    items: list[DeviceView]


def view(device: Manifest) -> DeviceView:
    spec = DeviceSpec.model_validate(device.get("spec") or {})
    status = DeviceStatus.model_validate(device.get("status") or {})
    annotations = device["metadata"].get("annotations") or {}
    return DeviceView(
        name=device["metadata"]["name"],
        gateway=spec.gateway,
        device_class=spec.device_class.value,
        owner=spec.owner,
        # Not yet seen by the operator: it is waiting all the same.
        state=status.state or (DeviceState.PENDING if not spec.revoked else DeviceState.REVOKED),
        serial=status.serial,
        not_after=status.not_after,
        certificate=status.certificate,
        message=status.message,
        approved_by=annotations.get(APPROVED_BY),
        revoked_by=annotations.get(REVOKED_BY),
    )


def _read(kube: Kube, namespace: str, name: str) -> Manifest:
    device = kube.get(Device, name, namespace)
    if device is None:
        raise not_found(f"device {name} in namespace {namespace}")
    return device


@router.post(
    "",
    status_code=201,
    response_model=DeviceView,
    response_model_exclude_none=True,
    summary="Ask to enrol a device (its CSR)",
    responses=problems.responses(400, 401, 403, 409, 422),
)
def enrol(
    hospital: HospitalParam, body: EnrolmentRequest, kube: KubeDep, authz: Authz, request: Request, response: Response
) -> DeviceView:
    """Creates the Device, Pending until someone allowed to ``approve`` devices approves it."""
    namespace = hospital_namespace(hospital)
    authz.authorize("create", "devices", namespace)
    try:
        deviceca.check_csr(body.csr, body.name)
    except deviceca.CSRError as exc:
        raise invalid_request(
            [FieldError(field="csr", detail=str(exc), pointer="#/csr", location="body")], str(exc)
        ) from exc
    if kube.get(DeviceGateway, body.gateway, namespace) is None:
        raise invalid_request(
            [
                FieldError(
                    field="gateway", detail=f"no DeviceGateway {body.gateway}", pointer="#/gateway", location="body"
                )
            ],
            f"hospital {hospital} has no DeviceGateway {body.gateway}",
        )
    device = Device.model_validate(
        {
            "metadata": {
                "name": body.name,
                "namespace": namespace,
                "labels": {labels.DEVICE_GATEWAY: body.gateway, labels.HOSPITAL: hospital},
            },
            "spec": {"gateway": body.gateway, "deviceClass": body.device_class, "owner": body.owner, "csr": body.csr},
        }
    )
    try:
        created = kube.create(Device, device.to_manifest())
    except ApiException as exc:
        if exc.status == 409:
            raise ProblemError(409, "conflict", f"device {body.name} is already enrolled or asking") from exc
        raise
    response.headers["Location"] = f"{request.url.path}/{body.name}"
    return view(created)


@router.get(
    "",
    response_model=DeviceList,
    response_model_exclude_none=True,
    summary="The hospital's devices",
    responses=problems.responses(401, 403, 422),
)
def list_devices(hospital: HospitalParam, kube: KubeDep, authz: Authz) -> DeviceList:
    namespace = hospital_namespace(hospital)
    authz.authorize("list", "devices", namespace)
    items = sorted(kube.list_all(Device, namespace), key=lambda d: str(d["metadata"]["name"]))
    return DeviceList(items=[view(d).model_copy(update={"certificate": None}) for d in items])


@router.get(
    "/{device}",
    response_model=DeviceView,
    response_model_exclude_none=True,
    summary="A device, and its certificate once issued",
    responses=problems.responses(401, 403, 404, 422),
)
def get_device(hospital: HospitalParam, device: DeviceParam, kube: KubeDep, authz: Authz) -> DeviceView:
    namespace = hospital_namespace(hospital)
    authz.authorize("get", "devices", namespace, device)
    return view(_read(kube, namespace, device))


def _decide(
    kube: Kube, authz: Authorizer, user: Caller, hospital: str, device: str, verb: str, field: str, annotation: str
) -> DeviceView:
    namespace = hospital_namespace(hospital)
    authz.authorize(verb, "devices", namespace, device)
    current = _read(kube, namespace, device)
    spec = current.get("spec") or {}
    if spec.get(field):
        return view(current)  # decided already: the same answer, nothing written
    if field == "approved" and spec.get("revoked"):
        raise ProblemError(409, "conflict", f"device {device} is revoked; enrol it anew")
    patch: dict[str, Any] = {"metadata": {"annotations": {annotation: user.username}}, "spec": {field: True}}
    return view(kube.merge_patch(Device, device, patch, namespace))


@router.post(
    "/{device}/approval",
    response_model=DeviceView,
    response_model_exclude_none=True,
    summary="Approve a device's enrolment (verb approve on devices)",
    responses=problems.responses(401, 403, 404, 409, 422),
)
def approve(hospital: HospitalParam, device: DeviceParam, kube: KubeDep, authz: Authz, user: CurrentUser) -> DeviceView:
    """The operator then signs the CSR; GET the device for its certificate."""
    return _decide(kube, authz, user, hospital, device, "approve", "approved", APPROVED_BY)


@router.post(
    "/{device}/revocation",
    response_model=DeviceView,
    response_model_exclude_none=True,
    summary="Revoke a device's certificate (verb revoke on devices)",
    responses=problems.responses(401, 403, 404, 422),
)
def revoke(hospital: HospitalParam, device: DeviceParam, kube: KubeDep, authz: Authz, user: CurrentUser) -> DeviceView:
    """The serial goes into the hospital's CRL: every listener refuses the device within the bound (docs/devices.md)."""
    return _decide(kube, authz, user, hospital, device, "revoke", "revoked", REVOKED_BY)
