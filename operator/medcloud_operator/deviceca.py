"""A hospital's tenant device CA and its trust Secret (CA certificates + CRLs): making, rotating, retiring them.

The operator's side of :mod:`medcloud.tenancy.deviceca`. The CA is made on
first need and never rewritten (its Secret is immutable); a lost CA Secret is
made again, which invalidates every device certificate (they must re-enrol):
said in the Event the handler posts. A rotation (:func:`rotate_ca`, asked
through the Hospital or due near the CA's end: :func:`keep_device_ca`) moves
the CA to the previous CA's Secret and makes a successor; the trust Secret then
carries both until the previous one is retired (:func:`ensure_trust`). The
trust Secret is signed again when its CAs or revoked serials change or a CRL's
nextUpdate is near.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from kubernetes.client.exceptions import ApiException

from medcloud.kube.client import DEVICE, HOSPITAL, SECRET, Kube, Manifest
from medcloud.models import DeviceCAStatus
from medcloud.tenancy import deviceca
from medcloud_operator.builders import device as builder
from medcloud_operator.builders import devicegateway as gateway_builder
from medcloud_operator.settings import WorkloadSettings


@dataclass(frozen=True)
class CurrentCA:
    ca: deviceca.TenantCA
    created: bool
    generation: int
    rotate_now: int
    """The Hospital's ``spec.deviceCaRotation.rotateNow`` this CA answers."""


@dataclass(frozen=True)
class Trust:
    current: CurrentCA
    crl_signed: bool
    previous: deviceca.TenantCA | None = None
    """The CA a rotation replaced, while it is still trusted."""
    previous_until: dt.datetime | None = None
    retired: deviceca.TenantCA | None = None
    """The previous CA, if this call dropped it from trust and deleted its key."""

    @property
    def ca(self) -> deviceca.TenantCA:
        return self.current.ca

    @property
    def created_ca(self) -> bool:
        return self.current.created


def ensure_ca(kube: Kube, namespace: str, hospital: str, now: dt.datetime) -> CurrentCA:
    """The hospital's CA, made if there is none.

    With none but a previous CA's Secret, a rotation was cut short between moving the CA aside and making its
    successor (:func:`rotate_ca`): the successor is made now, of the next generation, answering what was asked.
    """
    live = kube.get(SECRET, deviceca.CA_SECRET, namespace)
    if live is not None:
        return CurrentCA(builder.read_ca(live), False, builder.ca_generation(live), builder.ca_rotate_now(live))
    previous = kube.get(SECRET, deviceca.PREVIOUS_CA_SECRET, namespace)
    if previous is not None:
        generation, rotate_now = builder.ca_generation(previous) + 1, builder.successor_rotate_now(previous)
    else:
        # The first CA answers whatever rotation the Hospital already asks for: it is new.
        generation, rotate_now = 1, builder.rotate_now_of(kube.get(HOSPITAL, hospital))
    ca = deviceca.new_ca(hospital, now=now, generation=generation)
    raced = _create_unless_made(
        kube, builder.ca_secret(namespace, hospital, ca, generation=generation, rotate_now=rotate_now)
    )
    if raced is not None:
        # Another reconcile made it first: use that one, never ours.
        return CurrentCA(builder.read_ca(raced), False, builder.ca_generation(raced), builder.ca_rotate_now(raced))
    return CurrentCA(ca, True, generation, rotate_now)


def _create_unless_made(kube: Kube, secret: Manifest) -> Manifest | None:
    """The Secret created (None), or the one of that name someone made first (the create's 409), as it is."""
    try:
        kube.create(secret)
    except ApiException as exc:
        if exc.status != 409:
            raise
        live = kube.get(SECRET, secret["metadata"]["name"], secret["metadata"]["namespace"])
        if live is None:
            raise
        return live
    return None


class PreviousCATrustedError(Exception):
    """A rotation is due but the previous CA is still trusted: one overlap at a time (the message says until when)."""


def rotate_ca(kube: Kube, namespace: str, hospital: str, rotate_now: int, now: dt.datetime) -> CurrentCA:
    """The current CA moved to the previous CA's Secret and a new one of the next generation made current.

    Three writes, each safe to repeat if the next never happens: the previous CA's Secret created (a copy of
    the current one, saying what its successor answers), the current one deleted, the successor made
    (:func:`ensure_ca`, which also finishes a rotation cut short after the delete). The trust Secret still
    holds the old CA meanwhile; :func:`ensure_trust` then writes both. :class:`PreviousCATrustedError` when a previous
    CA other than the current one is still trusted.
    """
    live = kube.get(SECRET, deviceca.CA_SECRET, namespace)
    if live is None:
        return ensure_ca(kube, namespace, hospital, now)
    current = builder.read_ca(live)
    aside = builder.ca_secret(
        namespace,
        hospital,
        current,
        generation=builder.ca_generation(live),
        rotate_now=builder.ca_rotate_now(live),
        name=deviceca.PREVIOUS_CA_SECRET,
        successor_rotate_now=rotate_now,
    )
    held = _create_unless_made(kube, aside)
    # Held already: by this rotation cut short (a copy of the current CA: go on), or by an overlap not yet over.
    if held is not None and builder.read_ca(held).cert_pem != current.cert_pem:
        raise PreviousCATrustedError(
            f"the previous device CA {deviceca.ca_name(builder.read_ca(held).cert_pem)} is still trusted; "
            "a new rotation starts once it is retired"
        )
    kube.delete(SECRET, deviceca.CA_SECRET, namespace)
    return ensure_ca(kube, namespace, hospital, now)


def ensure_trust(kube: Kube, namespace: str, hospital: str, now: dt.datetime | None = None) -> Trust:
    """CA made if missing, the trust Secret written when its CAs or CRLs are due, and a previous CA no device
    needs any more dropped from trust and then its key deleted; writes nothing when nothing is due."""
    moment = now or dt.datetime.now(dt.UTC)
    current = ensure_ca(kube, namespace, hospital, moment)
    held = kube.get(SECRET, deviceca.PREVIOUS_CA_SECRET, namespace)
    previous = builder.read_ca(held) if held is not None else None
    plan = builder.plan_trust(current.ca, previous, kube.list(DEVICE, namespace), moment)
    live = kube.get(SECRET, deviceca.TRUST_SECRET, namespace)
    signed = builder.crl_due(live, plan.cas, moment)
    if signed:
        desired = builder.trust_secret(namespace, hospital, plan.cas, live, moment)
        if live is None:
            kube.create(desired)
        else:
            # resourceVersion: a concurrent signer's CRL (same number) is not overwritten; the 409 retries.
            desired["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
            kube.replace(desired)
    retired = None
    if plan.retire_previous and previous is not None:
        # Only now that the trust Secret no longer carries it: a key deleted first could not sign its CRL again.
        kube.delete(SECRET, deviceca.PREVIOUS_CA_SECRET, namespace)
        retired = previous
    kept = plan.cas[1].ca if len(plan.cas) > 1 else None
    return Trust(current, signed, kept, plan.previous_until, retired)


@dataclass(frozen=True)
class DeviceCAState:
    """What the Hospital's reconcile did to its device CA, and the status that says so."""

    status: DeviceCAStatus
    trust: Trust
    rotated_because: str | None
    """Why this reconcile rotated the CA (None: it did not)."""
    replaced: deviceca.TenantCA | None
    """The CA the rotation replaced."""


def keep_device_ca(
    kube: Kube, namespace: str, hospital: str, rotate_now: int, now: dt.datetime | None = None
) -> DeviceCAState | None:
    """The Hospital's share of its device CA: rotated when asked (``rotate_now`` above what the CA answers) or
    within :data:`deviceca.CA_RENEW_BEFORE` of its end, then the trust brought up to date (:func:`ensure_trust`,
    which also retires a previous CA no device needs). None while the hospital has no CA: a Device or
    DeviceGateway makes it, and there is nothing to rotate before. A rotation due while a previous CA is still
    trusted waits (the status message says so); nothing is written when nothing is due.
    """
    moment = now or dt.datetime.now(dt.UTC)
    made = kube.get(SECRET, deviceca.CA_SECRET, namespace) or kube.get(SECRET, deviceca.PREVIOUS_CA_SECRET, namespace)
    if made is None:
        return None
    # Retirement first: a rotation due at the end of an overlap then happens in this same reconcile.
    trust = ensure_trust(kube, namespace, hospital, moment)
    current = trust.current
    due = deviceca.rotation_due(
        current.ca.cert_pem, rotate_now=rotate_now, observed_rotate_now=current.rotate_now, now=moment
    )
    rotated_because = replaced = waiting = None
    if due is not None and trust.previous is not None:
        waiting = (
            f"a rotation is due ({due}) and waits: the previous device CA "
            f"{deviceca.ca_name(trust.previous.cert_pem)} is still trusted"
        )
    elif due is not None:
        try:
            rotate_ca(kube, namespace, hospital, max(rotate_now, current.rotate_now), moment)
            replaced, rotated_because = current.ca, due
        except PreviousCATrustedError as exc:  # another reconcile rotated meanwhile
            waiting = str(exc)
        before = trust
        trust = ensure_trust(kube, namespace, hospital, moment)
        # What the broker's bundle must follow: either write of the trust Secret.
        trust = replace(trust, crl_signed=trust.crl_signed or before.crl_signed)
    status = builder.device_ca_status(
        trust.ca.cert_pem,
        generation=trust.current.generation,
        rotate_now=trust.current.rotate_now,
        previous_pem=trust.previous.cert_pem if trust.previous is not None else None,
        previous_until=trust.previous_until,
        message=waiting,
    )
    return DeviceCAState(status, trust, rotated_because, replaced)


def ensure_serving(kube: Kube, gateway: Manifest, ca: deviceca.TenantCA, settings: WorkloadSettings) -> bytes:
    """The gateway's serving certificate (PEM), issued (again) by the tenant CA when due and kept in its Secret."""
    meta = gateway["metadata"]
    names = gateway_builder.serving_names(meta["name"], meta["namespace"])
    return _ensure_leaf(
        kube,
        gateway,
        deviceca.serving_secret_name(gateway_builder.child_name(meta["name"])),
        due=lambda current, now: deviceca.serving_due(current, ca.cert_pem, names, now),
        issue=lambda now: gateway_builder.build_serving_secret(
            gateway, deviceca.sign_server(ca, names, now=now), settings
        ),
    )


def ensure_broker_client(
    kube: Kube, gateway: Manifest, broker_ca: deviceca.TenantCA, settings: WorkloadSettings
) -> bytes:
    """The gateway's MQTT client certificate (PEM), issued (again) by the broker's client CA when due."""
    meta = gateway["metadata"]
    identity = gateway_builder.broker_identity(meta["name"], meta["namespace"])
    return _ensure_leaf(
        kube,
        gateway,
        deviceca.broker_secret_name(gateway_builder.child_name(meta["name"])),
        due=lambda current, now: deviceca.client_due(current, broker_ca.cert_pem, identity, now),
        issue=lambda now: gateway_builder.build_broker_secret(
            gateway, deviceca.sign_client(broker_ca, identity, now=now), broker_ca.cert_pem, settings
        ),
    )


def _ensure_leaf(
    kube: Kube,
    gateway: Manifest,
    name: str,
    *,
    due: Callable[[bytes | None, dt.datetime], bool],
    issue: Callable[[dt.datetime], Manifest],
) -> bytes:
    """A certificate Secret of the gateway written only when ``due`` says so; the certificate in force returned."""
    namespace = gateway["metadata"]["namespace"]
    live = kube.get(SECRET, name, namespace)
    current = base64.b64decode((live or {}).get("data", {}).get(deviceca.TLS_CERT_KEY, "")) or None
    now = dt.datetime.now(dt.UTC)
    if current is not None and not due(current, now):
        return current
    desired = issue(now)
    if live is None:
        kube.create(desired)
    else:
        # resourceVersion: a concurrent reconcile's certificate is not overwritten; the 409 retries.
        desired["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        kube.replace(desired)
    return base64.b64decode(desired["data"][deviceca.TLS_CERT_KEY])


def read_broker_ca(settings: WorkloadSettings) -> deviceca.TenantCA | None:
    """The CA the broker checks client certificates with, from the files the settings name (None: not configured)."""
    if settings.broker_client_ca_file is None or settings.broker_client_ca_key_file is None:
        return None
    return deviceca.TenantCA(
        Path(settings.broker_client_ca_file).read_bytes(), Path(settings.broker_client_ca_key_file).read_bytes()
    )
