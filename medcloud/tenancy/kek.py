"""The tenant key-encryption key (KEK): 256 bits from the OS CSPRNG, versioned, in the operator's namespace.

RecordStores wrap their data keys with it, so it never goes where tenants or
observers could read it: not in the tenant namespace (tenant admins may read
Secrets there), not in status, events or logs. Status carries its version and
creation time only.

Layout of Secret ``kek-<hospital>`` (type ``medcloud.io/kek``)::

    metadata:
      annotations:
        medcloud.io/observed-rotate-now: "1"   # the spec.keyRotation.rotateNow the newest version answered
    data:
      current-version: "2"            # which version wraps new data keys
      v1: <32 random bytes>           # older versions kept: rings not yet re-wrapped still need them
      v1-created-at: 2026-01-01T00:00:00Z
      v2: <32 random bytes>
      v2-created-at: 2026-04-01T00:00:00Z

A rotation (``spec.keyRotation.rotateNow`` raised) adds version N+1, makes it
current and records the ``rotateNow`` it answers, in one write: a lost status
update never causes a second rotation. Older versions stay until an
administrator prunes them once every RecordStore of the hospital has
re-wrapped its data keys (docs/key-rotation.md).

Everything that needs a KEK version reads it through :func:`parse_version` /
:func:`load_kek`: the Hospital handler, the RecordStore handler and the key
service (through :mod:`medcloud.tenancy.keyring`). Creating and rotating the
KEK is the operator's alone (``medcloud_operator.kek``).

A lost KEK is never regenerated silently: records wrapped with it would stay
unreadable while the status claimed all was well. The operator reports
``KeyReady=False`` (``KEKMissing``) until the Secret is restored from backup,
or until someone deliberately accepts the loss by clearing ``status.kek``.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from medcloud.kube.client import SECRET, Kube, Manifest
from medcloud.models.conditions import now_utc
from medcloud.tenancy import labels

KEK_BYTES = 32
SECRET_TYPE = "medcloud.io/kek"  # noqa: S105 - the name of a Secret type, not a secret
CURRENT_VERSION_KEY = "current-version"
OBSERVED_ROTATE_NOW = "medcloud.io/observed-rotate-now"
"""Annotation on the KEK Secret: the ``spec.keyRotation.rotateNow`` value its newest version answered."""
_VERSION_KEY = re.compile(r"^v([1-9][0-9]{0,8})$")


class KekInvalidError(RuntimeError):
    """The KEK Secret exists but does not hold a readable current version."""


class KekVersionMissingError(LookupError):
    """The KEK Secret, or the KEK version something is wrapped with, is not there (pruned, or never restored)."""


@dataclass(frozen=True)
class Kek:
    """One KEK version; ``material`` is kept out of ``repr`` so it cannot reach a log by accident."""

    version: int
    created_at: datetime
    material: bytes = field(repr=False)


def secret_name(hospital: str) -> str:
    return f"kek-{hospital}"


def b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


def _timestamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def version_data(kek: Kek) -> dict[str, str]:
    return {f"v{kek.version}": b64(kek.material), f"v{kek.version}-created-at": b64(_timestamp(kek.created_at))}


def build_secret(hospital: str, namespace: str, kek: Kek, *, observed_rotate_now: int = 0) -> Manifest:
    """The Secret holding ``kek`` as its first and current version."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": {
            "name": secret_name(hospital),
            "namespace": namespace,
            "labels": labels.tenancy_labels(hospital),
            "annotations": {OBSERVED_ROTATE_NOW: str(observed_rotate_now)},
        },
        "data": {CURRENT_VERSION_KEY: b64(str(kek.version)), **version_data(kek)},
    }


def generate(version: int = 1) -> Kek:
    """A fresh KEK from ``secrets.token_bytes`` (the OS CSPRNG)."""
    return Kek(version=version, created_at=now_utc(), material=secrets.token_bytes(KEK_BYTES))


def versions(secret: Manifest) -> tuple[int, ...]:
    """Every KEK version ``secret`` holds (keys ``v<n>``), oldest first."""
    found = (_VERSION_KEY.match(key) for key in (secret.get("data") or {}))
    return tuple(sorted(int(m.group(1)) for m in found if m))


def parse_version(secret: Manifest, version: int) -> Kek:
    """One KEK version held in ``secret``: the current one, or an older one a key ring is still wrapped with.

    Raises :class:`KekVersionMissingError` when the Secret no longer holds it
    and :class:`KekInvalidError` when it is there but unreadable. Messages
    name Secret keys, never values.
    """
    data = secret.get("data") or {}
    name = secret["metadata"]["name"]
    raw = data.get(f"v{version}")
    if raw is None:
        raise KekVersionMissingError(
            f"KEK version {version} is no longer in Secret {name}; restore it from backup to unwrap the keys "
            "wrapped with it"
        )
    try:
        material = base64.b64decode(raw, validate=True)
        created_at = datetime.fromisoformat(base64.b64decode(data[f"v{version}-created-at"]).decode())
    except (KeyError, ValueError, binascii.Error) as exc:
        raise KekInvalidError(f"KEK version {version} in Secret {name} is unreadable ({type(exc).__name__})") from None
    if len(material) != KEK_BYTES:
        raise KekInvalidError(f"KEK version {version} in Secret {name} is not {KEK_BYTES * 8} bits")
    return Kek(version=version, created_at=created_at, material=material)


def current_version(secret: Manifest) -> int:
    """The version ``current-version`` names."""
    try:
        return int(base64.b64decode((secret.get("data") or {})[CURRENT_VERSION_KEY]).decode())
    except (KeyError, ValueError, binascii.Error) as exc:
        raise KekInvalidError(
            f"Secret {secret['metadata']['name']} names no readable current KEK version ({type(exc).__name__})"
        ) from None


def parse_secret(secret: Manifest) -> Kek:
    """The current KEK version held in ``secret``."""
    version = current_version(secret)
    try:
        return parse_version(secret, version)
    except KekVersionMissingError:
        raise KekInvalidError(
            f"Secret {secret['metadata']['name']}: current-version {version} names a version it does not hold"
        ) from None


def load_secret(kube: Kube, hospital: str, namespace: str) -> Manifest:
    """The hospital's KEK Secret; :class:`KekVersionMissingError` when there is none."""
    live = kube.get(SECRET, secret_name(hospital), namespace)
    if live is None:
        raise KekVersionMissingError(f"Secret {namespace}/{secret_name(hospital)} does not exist")
    return live


def load_kek(kube: Kube, hospital: str, namespace: str, version: int | None = None) -> Kek:
    """KEK ``version`` of the hospital (the current one when None), for whoever wraps or unwraps data keys."""
    secret = load_secret(kube, hospital, namespace)
    return parse_secret(secret) if version is None else parse_version(secret, version)
