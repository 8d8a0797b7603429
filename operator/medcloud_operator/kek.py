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
service (through :mod:`keyring`).

A lost KEK is never regenerated silently: records wrapped with it would stay
unreadable while the status claimed all was well. The operator reports
``KeyReady=False`` (``KEKMissing``) until the Secret is restored from backup,
or until someone deliberately accepts the loss by clearing ``status.kek``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from medcloud_operator import labels
from medcloud_operator.conditions import now_utc
from medcloud_operator.kube import SECRET, Kube, Manifest

KEK_BYTES = 32
SECRET_TYPE = "medcloud.io/kek"  # noqa: S105 - the name of a Secret type, not a secret
CURRENT_VERSION_KEY = "current-version"
OBSERVED_ROTATE_NOW = "medcloud.io/observed-rotate-now"
"""Annotation on the KEK Secret: the ``spec.keyRotation.rotateNow`` value its newest version answered."""
_VERSION_KEY = re.compile(r"^v([1-9][0-9]{0,8})$")


class KekMissingError(RuntimeError):
    """The KEK Secret is gone although a version was issued: restore it, never regenerate it."""


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


@dataclass(frozen=True)
class KekState:
    """The hospital's KEK after :func:`ensure`: what is current, what is kept, and what was just done."""

    current: Kek
    versions: tuple[int, ...]
    """Every version the Secret holds, oldest first."""
    observed_rotate_now: int
    created: bool = False
    rotated_from: int | None = None
    """The version that was current before this call rotated; None when it did not rotate."""


def secret_name(hospital: str) -> str:
    return f"kek-{hospital}"


def _b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


def _timestamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _version_data(kek: Kek) -> dict[str, str]:
    return {f"v{kek.version}": _b64(kek.material), f"v{kek.version}-created-at": _b64(_timestamp(kek.created_at))}


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
        "data": {CURRENT_VERSION_KEY: _b64(str(kek.version)), **_version_data(kek)},
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


def _observed(live: Manifest, fallback: int) -> int:
    try:
        return int((live["metadata"].get("annotations") or {})[OBSERVED_ROTATE_NOW])
    except (KeyError, ValueError):
        return fallback


def ensure(
    kube: Kube,
    hospital: str,
    namespace: str,
    issued_version: int | None,
    *,
    rotate_now: int = 0,
    observed_rotate_now: int = 0,
) -> KekState:
    """The hospital's KEK, created on first use and rotated when ``rotate_now`` moved.

    ``issued_version`` is the version status says was issued: if it is set and
    the Secret is gone, the key is lost and :class:`KekMissingError` says so.
    ``observed_rotate_now`` (from status) counts only for a Secret written
    before the Secret carried the annotation. A rotation adds a version and
    keeps every older one; no version's material is ever rewritten. Otherwise
    only the Secret's labels are repaired.
    """
    live = kube.get(SECRET, secret_name(hospital), namespace)
    if live is None:
        if issued_version is not None:
            raise KekMissingError(
                f"Secret {namespace}/{secret_name(hospital)} with KEK version {issued_version} is gone; "
                "records wrapped with it cannot be unwrapped. Restore the Secret from backup, or clear "
                "status.kek to accept the loss and issue a new key."
            )
        # The first key answers whatever rotateNow the spec already carries.
        kek = generate()
        kube.create(build_secret(hospital, namespace, kek, observed_rotate_now=rotate_now))
        return KekState(kek, (kek.version,), rotate_now, created=True)
    current = parse_secret(live)
    held = versions(live)
    observed = _observed(live, observed_rotate_now)
    wanted = labels.tenancy_labels(hospital)
    live_labels = live["metadata"].get("labels") or {}
    if rotate_now != observed:
        return rotate(kube, live, current, held, rotate_now, wanted)
    if any(live_labels.get(k) != v for k, v in wanted.items()):
        kube.merge_patch(SECRET, secret_name(hospital), {"metadata": {"labels": wanted}}, namespace)
    return KekState(current, held, observed)


def rotate(
    kube: Kube, live: Manifest, current: Kek, held: tuple[int, ...], rotate_now: int, wanted_labels: dict[str, str]
) -> KekState:
    """Add version N+1 and make it current, with the ``rotate_now`` it answers: one write, or none on conflict.

    The write is a PUT carrying the Secret's resourceVersion, so a concurrent
    change (another replica, a person) fails it with 409 rather than losing a
    version; the caller retries from a fresh read.
    """
    new = generate(max(held, default=current.version) + 1)
    body = copy.deepcopy(live)
    body["data"] = {**(live.get("data") or {}), CURRENT_VERSION_KEY: _b64(str(new.version)), **_version_data(new)}
    meta = body["metadata"]
    meta["labels"] = {**(meta.get("labels") or {}), **wanted_labels}
    meta["annotations"] = {**(meta.get("annotations") or {}), OBSERVED_ROTATE_NOW: str(rotate_now)}
    kube.replace(body)
    return KekState(new, (*held, new.version), rotate_now, rotated_from=current.version)
