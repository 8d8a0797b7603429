"""What the operator decides for a Device and for its hospital's device trust (pure).

In: the Device as read, the CA, the trust Secret as read, the clock. Out: the
Device's next status, the CA and trust Secrets' manifests, whether the CRL
must be signed again. The handler (``handlers.device``) does the reading and
writing; nothing here talks to the API server or logs key material.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509

from medcloud.certificates import CRL_MARKER, pem_blocks
from medcloud.kube.client import Manifest
from medcloud.models import (
    READY,
    ConditionStatus,
    DeviceCACertificate,
    DeviceCAStatus,
    DeviceCounts,
    DeviceSpec,
    DeviceState,
    DeviceStatus,
    PreviousDeviceCA,
)
from medcloud.models.conditions import set_condition
from medcloud.models.device import PHASE_OF_STATE
from medcloud.tenancy import deviceca, devicecrl, labels
from medcloud.tenancy.devicecrl import Revocation

CRL_VALIDITY = devicecrl.DEFAULT_VALIDITY
CRL_REFRESH_MARGIN = dt.timedelta(days=2)
"""A CRL is signed again once its nextUpdate is this close: the resync timer runs far more often than that."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _secret(name: str, namespace: str, hospital: str, data: dict[str, bytes], **extra: object) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels.tenancy_labels(hospital), labels.COMPONENT: "device-ca"},
            **extra,
        },
        "data": {key: _b64(value) for key, value in sorted(data.items())},
    }


def ca_secret(
    namespace: str,
    hospital: str,
    ca: deviceca.TenantCA,
    *,
    generation: int = 1,
    rotate_now: int = 0,
    name: str = deviceca.CA_SECRET,
    successor_rotate_now: int | None = None,
) -> Manifest:
    """A Secret holding a tenant CA (the operator's alone); immutable: a CA key is never rewritten.

    The annotations say which generation it is, which ``spec.deviceCaRotation.rotateNow`` it answers and, on
    the previous CA's Secret (``name`` :data:`deviceca.PREVIOUS_CA_SECRET`), which one its successor answers.
    """
    annotations = {
        deviceca.GENERATION_ANNOTATION: str(generation),
        deviceca.ROTATE_NOW_ANNOTATION: str(rotate_now),
    }
    if successor_rotate_now is not None:
        annotations[deviceca.SUCCESSOR_ROTATE_NOW_ANNOTATION] = str(successor_rotate_now)
    manifest = _secret(
        name,
        namespace,
        hospital,
        {deviceca.TLS_CERT_KEY: ca.cert_pem, deviceca.TLS_KEY_KEY: ca.key_pem},
        annotations=annotations,
    )
    return {**manifest, "type": "kubernetes.io/tls", "immutable": True}


def read_ca(secret: Manifest) -> deviceca.TenantCA:
    data = secret.get("data") or {}
    return deviceca.TenantCA(
        base64.b64decode(data[deviceca.TLS_CERT_KEY]), base64.b64decode(data[deviceca.TLS_KEY_KEY])
    )


def _annotation_number(secret: Manifest, key: str, default: int) -> int:
    try:
        return int((secret["metadata"].get("annotations") or {}).get(key, default))
    except ValueError:
        return default


def ca_generation(secret: Manifest) -> int:
    """The generation of a CA Secret's CA (1: a CA made before rotation existed)."""
    return _annotation_number(secret, deviceca.GENERATION_ANNOTATION, 1)


def ca_rotate_now(secret: Manifest) -> int:
    """The ``rotateNow`` a CA Secret's CA answers (0: none asked when it was made)."""
    return _annotation_number(secret, deviceca.ROTATE_NOW_ANNOTATION, 0)


def successor_rotate_now(previous: Manifest) -> int:
    """The ``rotateNow`` the successor of the previous CA answers (its own, when the annotation is missing)."""
    return _annotation_number(previous, deviceca.SUCCESSOR_ROTATE_NOW_ANNOTATION, ca_rotate_now(previous))


def rotate_now_of(hospital: Manifest | None) -> int:
    """A Hospital's ``spec.deviceCaRotation.rotateNow`` as read (0 without a Hospital or the field)."""
    value = (((hospital or {}).get("spec") or {}).get("deviceCaRotation") or {}).get("rotateNow", 0)
    return value if isinstance(value, int) else 0


@dataclass(frozen=True)
class TrustedCA:
    """A CA the trust Secret carries and the revocations its CRL lists."""

    ca: deviceca.TenantCA
    revoked: tuple[Revocation, ...]


@dataclass(frozen=True)
class TrustPlan:
    """What the trust Secret holds: the current CA first, then the previous one while it is needed."""

    cas: tuple[TrustedCA, ...]
    previous_until: dt.datetime | None
    """Until when the previous CA stays trusted at the latest (None: there is none, or it is retired now)."""
    retire_previous: bool
    """A previous CA exists that no device needs any more: drop it from trust, then delete its key."""


def _certificate(status: DeviceStatus) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(status.certificate.encode()) if status.certificate else None
    except ValueError:
        return None


def revocations(devices: Iterable[Manifest], ca_cert_pem: bytes) -> list[Revocation]:
    """The serials the CA's CRL must list: every Device the operator marked Revoked after this CA issued its
    certificate (one whose certificate is not in its status is listed by every CA: a random 159-bit serial
    another CA never issued revokes nothing)."""
    subject = x509.load_pem_x509_certificate(ca_cert_pem).subject
    out = []
    for device in devices:
        status = DeviceStatus.model_validate(device.get("status") or {})
        if status.state is not DeviceState.REVOKED or not status.serial or not status.revoked_at:
            continue
        cert = _certificate(status)
        if cert is None or cert.issuer == subject:
            out.append(Revocation(int(status.serial, 16), status.revoked_at))
    return sorted(out, key=lambda r: r.serial)


def enrolled_certificates(devices: Iterable[Manifest]) -> list[bytes]:
    """The certificates (PEM) of the Devices that are Enrolled: issued and not revoked."""
    out = []
    for device in devices:
        status = DeviceStatus.model_validate(device.get("status") or {})
        if status.state is DeviceState.ENROLLED and status.certificate:
            out.append(status.certificate.encode())
    return out


def plan_trust(
    current: deviceca.TenantCA, previous: deviceca.TenantCA | None, devices: list[Manifest], now: dt.datetime
) -> TrustPlan:
    """Which CAs the trust Secret carries, with their revocations: the current one always; the previous one
    (if distinct) until no unexpired, unrevoked device certificate of it remains or it expires."""
    if previous is not None and previous.cert_pem == current.cert_pem:
        previous = None  # a rotation cut short before the new CA was made: nothing to overlap yet
    until = deviceca.trusted_until(previous.cert_pem, enrolled_certificates(devices), now) if previous else None
    kept = [current] + ([previous] if previous is not None and until is not None else [])
    cas = tuple(TrustedCA(ca, tuple(revocations(devices, ca.cert_pem))) for ca in kept)
    return TrustPlan(cas, until, previous is not None and until is None)


def _crl_number(trust: Manifest | None) -> int:
    annotations = ((trust or {}).get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations.get(deviceca.CRL_NUMBER_ANNOTATION, "0"))
    except ValueError:
        return 0


def _crls(trust: Manifest | None) -> dict[x509.Name, tuple[dt.datetime | None, frozenset[int]]] | None:
    """The trust Secret's CRLs by issuer: nextUpdate and revoked serials (None: no readable CRL)."""
    try:
        bundle = base64.b64decode(((trust or {}).get("data") or {})[devicecrl.CRL_KEY])
        crls = [x509.load_pem_x509_crl(block) for block in pem_blocks(bundle, CRL_MARKER)]
    except (KeyError, ValueError):
        return None
    return {crl.issuer: (crl.next_update_utc, frozenset(r.serial_number for r in crl)) for crl in crls} or None


def _ca_bundle(cas: Sequence[TrustedCA]) -> bytes:
    return b"".join(trusted.ca.cert_pem for trusted in cas)


def crl_due(trust: Manifest | None, cas: Sequence[TrustedCA], now: dt.datetime) -> bool:
    """Whether the trust Secret must be written again: no CRL yet, other CAs than ``cas``, a CA whose CRL is
    missing or lists other serials, or a CRL's nextUpdate near."""
    crls = _crls(trust)
    if crls is None:
        return True
    shipped = base64.b64decode(((trust or {}).get("data") or {}).get(deviceca.CA_CERT_KEY, ""))
    if shipped != _ca_bundle(cas) or len(crls) != len(cas):
        return True
    for trusted in cas:
        next_update, serials = crls.get(x509.load_pem_x509_certificate(trusted.ca.cert_pem).subject, (None, None))
        if next_update is None or next_update - now <= CRL_REFRESH_MARGIN:
            return True
        if serials != frozenset(r.serial for r in trusted.revoked):
            return True
    return False


def trust_secret(
    namespace: str, hospital: str, cas: Sequence[TrustedCA], previous: Manifest | None, now: dt.datetime
) -> Manifest:
    """The Secret the gateway mounts: the CAs' certificates (``ca.crt``) and a freshly signed CRL of each
    (``ca.crl``), both PEM bundles in the same order, the CRLs' number one more than before."""
    number = _crl_number(previous) + 1
    crls = [
        devicecrl.build_crl(t.ca.cert_pem, t.ca.key_pem, t.revoked, now=now, number=number, validity=CRL_VALIDITY)
        for t in cas
    ]
    annotations = {
        deviceca.CRL_NUMBER_ANNOTATION: str(number),
        deviceca.CRL_NEXT_UPDATE_ANNOTATION: (now + CRL_VALIDITY).isoformat(),
    }
    return _secret(
        deviceca.TRUST_SECRET,
        namespace,
        hospital,
        {deviceca.CA_CERT_KEY: _ca_bundle(cas), devicecrl.CRL_KEY: b"".join(crls)},
        annotations=annotations,
    )


def _described(cert_pem: bytes) -> DeviceCACertificate:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return DeviceCACertificate(
        name=deviceca.ca_name(cert_pem),
        serial=deviceca.serial_text(cert.serial_number),
        not_after=cert.not_valid_after_utc,
    )


def device_ca_status(
    current_pem: bytes,
    *,
    generation: int,
    rotate_now: int,
    previous_pem: bytes | None,
    previous_until: dt.datetime | None,
    message: str | None,
) -> DeviceCAStatus:
    """The Hospital's ``status.deviceCa``: the current CA, the previous one while trusted (public facts only)."""
    previous = None
    if previous_pem is not None and previous_until is not None:
        previous = PreviousDeviceCA(**_described(previous_pem).model_dump(), trusted_until=previous_until)
    return DeviceCAStatus(
        generation=generation,
        current=_described(current_pem),
        observed_rotate_now=rotate_now,
        previous=previous,
        message=message,
    )


def next_status(device: Manifest, previous: DeviceStatus, ca: deviceca.TenantCA, now: dt.datetime) -> DeviceStatus:
    """The state moved on (:func:`next_state`), with the phase and Ready condition that follow from it."""
    new = next_state(device, previous, ca, now)
    assert new.state is not None
    ready = ConditionStatus.TRUE if new.state is DeviceState.ENROLLED else ConditionStatus.FALSE
    conditions = set_condition(
        new.conditions, READY, ready, new.state.value, new.message or "", new.observed_generation, now
    )
    return new.model_copy(update={"phase": PHASE_OF_STATE[new.state], "conditions": conditions})


def next_state(device: Manifest, previous: DeviceStatus, ca: deviceca.TenantCA, now: dt.datetime) -> DeviceStatus:
    """Pending until approved; then signed once (Enrolled) or refused; Revoked once revoked, never back."""
    spec = DeviceSpec.model_validate(device.get("spec") or {})
    generation = device["metadata"].get("generation")
    name = device["metadata"]["name"]
    base = previous.model_copy(update={"observed_generation": generation})
    if spec.revoked:
        if previous.state is DeviceState.REVOKED:
            return base
        message = (
            f"certificate {previous.serial} is in the hospital's CRL"
            if previous.serial
            else "revoked before it was signed"
        )
        return base.model_copy(update={"state": DeviceState.REVOKED, "revoked_at": now, "message": message})
    if previous.state in (DeviceState.ENROLLED, DeviceState.REFUSED):
        return base
    if not spec.approved:
        return base.model_copy(update={"state": DeviceState.PENDING, "message": "waiting for an approver"})
    try:
        issued = deviceca.sign_device(ca, spec.csr, name, now=now)
    except deviceca.CSRError as exc:
        return base.model_copy(update={"state": DeviceState.REFUSED, "message": f"CSR not signed: {exc}"})
    return base.model_copy(
        update={
            "state": DeviceState.ENROLLED,
            "serial": deviceca.serial_text(issued.serial),
            "certificate": issued.cert_pem.decode(),
            "not_after": issued.not_after,
            "message": "signed by the hospital's device CA",
        }
    )


def counts(devices: Iterable[Manifest]) -> DeviceCounts:
    """A gateway's devices by state, from its Devices (active is the gateway's to report: left unset here)."""
    states = [DeviceStatus.model_validate(d.get("status") or {}).state for d in devices]
    return DeviceCounts(
        enrolled=sum(1 for s in states if s is DeviceState.ENROLLED),
        revoked=sum(1 for s in states if s is DeviceState.REVOKED),
        pending=sum(1 for s in states if s is DeviceState.PENDING),
    )
