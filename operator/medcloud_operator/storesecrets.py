"""The Secrets a RecordStore owns beside its bucket: credentials, the data-key ring, and its tombstone.

- :func:`ensure_credentials`: the credentials Secret in the hospital namespace (COSI and OBC keys,
  :mod:`medcloud.tenancy.credentials`); the MinIO user's secret key is generated once and kept.
- :func:`ensure_ring`: the data-key ring in the operator namespace (:mod:`medcloud.tenancy.keyring`),
  created once, re-wrapped when the hospital's KEK moves on, given a new data-key version when due.
- :func:`shred`: the ring replaced by a tombstone holding no key (crypto-shredding).

The KEK these keys are wrapped with is :mod:`medcloud_operator.kek`'s. Each
function reads first and writes at most once; none logs, and no message
names a key, only versions.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass
from datetime import datetime

from medcloud.kube.client import SECRET, Kube, Manifest
from medcloud.models import RecordStoreSpec, RecordStoreStatus
from medcloud.models.conditions import now_utc
from medcloud.records.keys import KeyRing
from medcloud.tenancy import kek, keyring
from medcloud.tenancy.credentials import (
    SECRET_KEY_FIELD,
    build_credentials_secret,
    decoded,
    secret_differs,
    secret_is_ours,
)
from medcloud.tenancy.store import StoreNames
from medcloud_operator.builders.recordstore import rotation_reason
from medcloud_operator.settings import StorageSettings
from medcloud_operator.storage import Storage

OBSERVED_ROTATE_NOW = "medcloud.io/observed-rotate-now"
"""Annotation on the key ring Secret: the rotateNow value the ring's newest version answered.

Kept with the ring, not only in status, so that a rotation and the record of
having done it are one write: a lost status write never causes a second rotation.
"""
SECRET_KEY_LENGTH = 40  # MinIO accepts secret keys of 8 to 40 characters; the longest is the strongest.


class SecretConflictError(RuntimeError):
    """A Secret of the credentials' name exists and was not written by the operator: it is never overwritten."""


class RingShreddedError(RuntimeError):
    """The store's key ring is a tombstone: its keys were crypto-shredded and are never issued again."""


def ensure_credentials(
    kube: Kube, names: StoreNames, storage: Storage, settings: StorageSettings
) -> tuple[str, list[tuple[str, str]]]:
    """The credentials Secret as it should be; the user's secret key is generated once and then kept."""
    live = kube.get(SECRET, names.secret, names.namespace)
    if live is not None and not secret_is_ours(live, names):
        raise SecretConflictError(
            f"Secret {names.namespace}/{names.secret} exists and was not written by the operator; "
            "it is not overwritten. Rename or remove it."
        )
    secret_key = decoded(live, SECRET_KEY_FIELD) if live is not None else None
    changes: list[tuple[str, str]] = []
    if not secret_key or len(secret_key) < 32:
        secret_key = secrets.token_urlsafe(30)[:SECRET_KEY_LENGTH]
    desired = build_credentials_secret(
        names, storage.public_endpoint, storage.region, secret_key, key_service_url=settings.key_service_url
    )
    if live is None:
        kube.create(desired)
        changes.append(("CredentialsIssued", f"Secret {names.secret} with the credentials of user {names.user}"))
    elif secret_differs(desired, live):
        body = copy.deepcopy(live)
        body["data"] = desired["data"]
        meta = body["metadata"]
        for part in ("labels", "annotations"):
            meta[part] = {**(meta.get(part) or {}), **desired["metadata"][part]}
        if body.get("type") != desired["type"]:
            # A Secret's type cannot change in place.
            kube.delete(SECRET, names.secret, names.namespace)
            kube.create(desired)
        else:
            kube.replace(body)
        changes.append(("CredentialsRepaired", f"Secret {names.secret} put back as the operator wrote it"))
    return secret_key, changes


@dataclass
class RingState:
    ring: KeyRing
    observed_rotate_now: int
    changes: list[tuple[str, str]]
    rotated: bool


def ensure_ring(
    kube: Kube,
    names: StoreNames,
    operator_namespace: str,
    kek_secret: Manifest,
    current: kek.Kek,
    spec: RecordStoreSpec,
    previous: RecordStoreStatus,
    now: datetime,
) -> RingState:
    """Create, re-wrap and rotate the store's key ring; one write to its Secret at most."""
    name = keyring.secret_name(names)
    live = kube.get(SECRET, name, operator_namespace)
    rotate_now = spec.key_rotation.rotate_now
    if live is None:
        if previous.key_version is not None:
            raise keyring.KeyRingMissingError(
                f"Secret {operator_namespace}/{name} with data keys up to version {previous.key_version} is gone; "
                "records encrypted under them cannot be read. Restore the Secret from backup (it is never "
                "regenerated, which would hide the loss)."
            )
        ring = KeyRing.create(
            hospital=names.hospital, store=names.store, kek=current.material, kek_version=current.version, now=now
        )
        secret = keyring.build_secret(names, operator_namespace, ring.to_dict())
        secret["metadata"]["annotations"][OBSERVED_ROTATE_NOW] = str(rotate_now)
        kube.create(secret)
        message = f"Data-key version 1 created, wrapped by KEK version {current.version}"
        return RingState(ring, rotate_now, [("KeysCreated", message)], rotated=True)

    data = keyring.ring_dict(live)
    if data.get("shreddedAt") is not None:
        raise RingShreddedError(
            f"The keys of store {names.namespace}/{names.store} were crypto-shredded at {data['shreddedAt']}; "
            f"its records can never be decrypted. Secret {operator_namespace}/{name} is the tombstone that "
            "says so: delete it (an administrator) only to reuse this name for a new store beside the old bucket."
        )
    ring = keyring.open_ring(data, names, kek_secret)
    annotations = live["metadata"].get("annotations") or {}
    try:
        observed = int(annotations.get(OBSERVED_ROTATE_NOW, rotate_now))
    except ValueError:
        observed = rotate_now
    changes: list[tuple[str, str]] = []
    if ring.kek_version > current.version:
        raise kek.KekInvalidError(
            f"the key ring is wrapped by KEK version {ring.kek_version} but the hospital's current KEK is "
            f"version {current.version}: the KEK Secret was rolled back"
        )
    if ring.kek_version < current.version:
        old = ring.kek_version
        ring.rewrap(current.material, current.version)
        rewrapped = f"Data keys 1..{max(ring.versions)} re-wrapped from KEK version {old} to {current.version}"
        changes.append(("KeysRewrapped", rewrapped))
    current_entry = next(e for e in ring.entries if e.version == ring.current_version)
    reason = rotation_reason(spec.key_rotation, observed, current_entry.created_at, now)
    rotated = False
    if reason is not None:
        version = ring.new_data_key_version(now=now)
        rotated = True
        changes.append(("KeyRotated", f"Data-key version {version} is now current: {reason}"))
    if changes or observed != rotate_now:
        body = copy.deepcopy(live)
        body["data"] = keyring.build_secret(names, operator_namespace, ring.to_dict())["data"]
        body["metadata"]["annotations"] = {**annotations, OBSERVED_ROTATE_NOW: str(rotate_now)}
        kube.replace(body)
    return RingState(ring, rotate_now, changes, rotated)


def shred(kube: Kube, names: StoreNames, operator_namespace: str) -> bool:
    """Replace the key ring with its tombstone; False when there was nothing (left) to shred."""
    live = kube.get(SECRET, keyring.secret_name(names), operator_namespace)
    if live is None:
        return False
    try:
        data = keyring.ring_dict(live)
    except keyring.KeyRingInvalidError:
        data = {}
    if data.get("shreddedAt") is not None:
        return False
    body = copy.deepcopy(live)
    body["data"] = keyring.build_secret(names, operator_namespace, keyring.tombstone(names, data, now_utc()))["data"]
    kube.replace(body)
    return True
