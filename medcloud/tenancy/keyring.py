"""A RecordStore's data-key ring at rest: a Secret in the operator's namespace, never in the tenant's.

Tenant admins may read Secrets in their own namespace; the key ring lives
where only the operator and the key service can read it. It holds data keys
*wrapped* by the hospital KEK (see :mod:`medcloud.records.keys`), so even a
reader of this Secret learns nothing without the KEK Secret beside it.

Layout of Secret ``keys-<bucket>`` (type ``medcloud.io/keyring``)::

    data:
      keyring.json: {"format": "medcloud.io/keyring/v1", "hospital": ..., "store": ...,
                     "kekVersion": 2, "currentVersion": 3, "dataKeys": [...]}

After crypto-shredding the same Secret stays behind as a tombstone: a ring
with ``shreddedAt`` and no keys. It stops a new RecordStore of the same name
from quietly getting fresh keys beside a bucket of records nobody can read.

Both the operator and the key service load rings through this module.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from medcloud.kube.client import SECRET, Kube, Manifest
from medcloud.records.keys import KeyRing, KeyUnwrapError
from medcloud.tenancy import kek
from medcloud.tenancy.store import STORE_ANNOTATION, StoreNames, store_labels

SECRET_TYPE = "medcloud.io/keyring"  # noqa: S105 - the name of a Secret type, not a secret
DATA_KEY = "keyring.json"


class KeyRingMissingError(LookupError):
    """The store has no key ring Secret."""


class KeyRingInvalidError(ValueError):
    """The key ring Secret does not parse, or its keys do not unwrap under the KEK it names."""


KekVersionMissingError = kek.KekVersionMissingError
"""The KEK Secret (or the KEK version a key ring is wrapped with) is gone; defined in :mod:`kek`."""


def secret_name(names: StoreNames) -> str:
    """``keys-<bucket>``: the bucket name is already unique per (hospital, store) and short."""
    return f"keys-{names.bucket}"


def build_secret(names: StoreNames, operator_namespace: str, ring: Mapping[str, Any]) -> Manifest:
    """The Secret holding ``ring`` (a :meth:`KeyRing.to_dict`: versions and wrapped keys, no key in clear)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": {
            "name": secret_name(names),
            "namespace": operator_namespace,
            "labels": store_labels(names.hospital),
            "annotations": {STORE_ANNOTATION: f"{names.namespace}/{names.store}"},
        },
        "data": {DATA_KEY: base64.b64encode(json.dumps(ring, sort_keys=True).encode()).decode()},
    }


def ring_dict(secret: Manifest) -> dict[str, Any]:
    """The key ring dict stored in ``secret``."""
    raw = (secret.get("data") or {}).get(DATA_KEY)
    try:
        data = json.loads(base64.b64decode(raw or "", validate=True))
    except (ValueError, binascii.Error):
        raise KeyRingInvalidError(f"Secret {secret['metadata']['name']} holds no readable {DATA_KEY}") from None
    if not isinstance(data, dict):
        raise KeyRingInvalidError(f"Secret {secret['metadata']['name']}: {DATA_KEY} is not an object")
    return data


def load_kek_secret(kube: Kube, hospital: str, operator_namespace: str) -> Manifest:
    """The hospital's KEK Secret (see :func:`kek.load_secret`), read once for a ring and the current KEK."""
    return kek.load_secret(kube, hospital, operator_namespace)


def _check_owner(data: Mapping[str, Any], names: StoreNames) -> None:
    """A ring Secret copied from another store would fail to unwrap anyway (the wrap binds hospital and
    store), but this says so plainly."""
    if data.get("hospital") != names.hospital or data.get("store") != names.store:
        raise KeyRingInvalidError(
            f"key ring names store {data.get('hospital')}/{data.get('store')}, not {names.hospital}/{names.store}"
        )


def ring_kek_version(data: Mapping[str, Any], names: StoreNames) -> int:
    """The KEK version the ring's data keys are wrapped with (``kekVersion``)."""
    try:
        return int(data["kekVersion"])
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyRingInvalidError(f"key ring of {names.namespace}/{names.store} is malformed: {exc!r}") from None


def _unlock(data: Mapping[str, Any], names: StoreNames, key: kek.Kek | None) -> KeyRing:
    try:
        return KeyRing.from_dict(data, kek=key.material if key is not None else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyRingInvalidError(f"key ring of {names.namespace}/{names.store} is malformed: {exc}") from None
    except KeyUnwrapError:
        raise KeyRingInvalidError(
            f"key ring of {names.namespace}/{names.store} does not unwrap under KEK version {data.get('kekVersion')}"
        ) from None


def open_ring(data: Mapping[str, Any], names: StoreNames, kek_secret: Manifest) -> KeyRing:
    """The ring ``data`` unlocked with the KEK version it names, from ``kek_secret``; a shredded ring needs no KEK."""
    _check_owner(data, names)
    if data.get("shreddedAt") is not None:
        return _unlock(data, names, None)
    return _unlock(data, names, kek.parse_version(kek_secret, ring_kek_version(data, names)))


def load(kube: Kube, names: StoreNames, operator_namespace: str) -> KeyRing:
    """The store's ring, unlocked; raises :class:`KeyRingMissingError` when there is none.

    The KEK version comes from :func:`kek.load_kek`: the one the ring names,
    which after a KEK rotation may be an older version until the operator
    re-wraps the ring.
    """
    secret = kube.get(SECRET, secret_name(names), operator_namespace)
    if secret is None:
        raise KeyRingMissingError(f"store {names.namespace}/{names.store} has no key ring")
    data = ring_dict(secret)
    _check_owner(data, names)
    if data.get("shreddedAt") is not None:
        return _unlock(data, names, None)
    version = ring_kek_version(data, names)
    return _unlock(data, names, kek.load_kek(kube, names.hospital, operator_namespace, version))


def tombstone(names: StoreNames, data: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The ring after crypto-shredding: its versions and KEK version are kept, every wrapped key dropped.

    Built from the stored dict without unwrapping anything, so shredding works
    even when the KEK is already gone.
    """
    try:
        kek_version = int(data.get("kekVersion", 1))
        current = int(data.get("currentVersion", 1))
    except (TypeError, ValueError):
        kek_version, current = 1, 1
    ring = KeyRing(
        hospital=names.hospital,
        store=names.store,
        kek=None,
        kek_version=max(1, kek_version),
        entries=[],
        current_version=max(1, current),
        shredded_at=now.astimezone(UTC).replace(microsecond=0),
    )
    return ring.to_dict()
