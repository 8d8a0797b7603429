"""What the operator decides for a Device and for its hospital's device trust (pure).

In: the Device as read, the CA, the trust Secret as read, the clock. Out: the
Device's next status, the CA and trust Secrets' manifests, whether the CRL
must be signed again. The handler (``handlers.device``) does the reading and
writing; nothing here talks to the API server or logs key material.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable

from cryptography import x509

from medcloud.kube.client import Manifest
from medcloud.models import READY, ConditionStatus, DeviceCounts, DeviceSpec, DeviceState, DeviceStatus
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


def ca_secret(namespace: str, hospital: str, ca: deviceca.TenantCA) -> Manifest:
    """The Secret holding the tenant CA (the operator's alone); immutable: a CA key is never rewritten."""
    manifest = _secret(
        deviceca.CA_SECRET,
        namespace,
        hospital,
        {deviceca.TLS_CERT_KEY: ca.cert_pem, deviceca.TLS_KEY_KEY: ca.key_pem},
    )
    return {**manifest, "type": "kubernetes.io/tls", "immutable": True}


def read_ca(secret: Manifest) -> deviceca.TenantCA:
    data = secret.get("data") or {}
    return deviceca.TenantCA(
        base64.b64decode(data[deviceca.TLS_CERT_KEY]), base64.b64decode(data[deviceca.TLS_KEY_KEY])
    )


def revocations(devices: Iterable[Manifest]) -> list[Revocation]:
    """The serials the CRL must list: every Device the operator marked Revoked after issuing it a certificate."""
    out = []
    for device in devices:
        status = DeviceStatus.model_validate(device.get("status") or {})
        if status.state is DeviceState.REVOKED and status.serial and status.revoked_at:
            out.append(Revocation(int(status.serial, 16), status.revoked_at))
    return sorted(out, key=lambda r: r.serial)


def _crl_facts(trust: Manifest | None) -> tuple[int, dt.datetime | None, frozenset[int] | None]:
    """The trust Secret's CRL number, nextUpdate and revoked serials (None: no readable CRL)."""
    if trust is None:
        return 0, None, None
    annotations = trust["metadata"].get("annotations") or {}
    try:
        number = int(annotations.get(deviceca.CRL_NUMBER_ANNOTATION, "0"))
        crl = x509.load_pem_x509_crl(base64.b64decode((trust.get("data") or {})[devicecrl.CRL_KEY]))
    except (KeyError, ValueError):
        return 0, None, None
    return number, crl.next_update_utc, frozenset(r.serial_number for r in crl)


def crl_due(trust: Manifest | None, ca_cert_pem: bytes, wanted: list[Revocation], now: dt.datetime) -> bool:
    """Whether a new CRL must be signed: none yet, another CA's, other serials, or nextUpdate near."""
    _, next_update, serials = _crl_facts(trust)
    if serials is None or next_update is None:
        return True
    shipped = base64.b64decode((trust or {}).get("data", {}).get(deviceca.CA_CERT_KEY, ""))
    if shipped != ca_cert_pem:
        return True
    return serials != frozenset(r.serial for r in wanted) or next_update - now <= CRL_REFRESH_MARGIN


def trust_secret(
    namespace: str,
    hospital: str,
    ca: deviceca.TenantCA,
    previous: Manifest | None,
    wanted: list[Revocation],
    now: dt.datetime,
) -> Manifest:
    """The Secret the gateway mounts: CA certificate and a freshly signed CRL, its number one more than before."""
    number = _crl_facts(previous)[0] + 1
    crl = devicecrl.build_crl(ca.cert_pem, ca.key_pem, wanted, now=now, number=number, validity=CRL_VALIDITY)
    annotations = {
        deviceca.CRL_NUMBER_ANNOTATION: str(number),
        deviceca.CRL_NEXT_UPDATE_ANNOTATION: (now + CRL_VALIDITY).isoformat(),
    }
    return _secret(
        deviceca.TRUST_SECRET,
        namespace,
        hospital,
        {deviceca.CA_CERT_KEY: ca.cert_pem, devicecrl.CRL_KEY: crl},
        annotations=annotations,
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
