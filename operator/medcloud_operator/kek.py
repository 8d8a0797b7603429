"""Creating and rotating a hospital's KEK: the operator's side of :mod:`medcloud.tenancy.kek`.

The Secret's layout, and reading it, belong to the tenancy contract that the
key service shares; only the operator writes it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from kubernetes.client.exceptions import ApiException

from medcloud.kube.client import SECRET, Kube, Manifest
from medcloud.tenancy import kek, labels


class KekMissingError(RuntimeError):
    """The KEK Secret is gone although a version was issued: restore it, never regenerate it."""


@dataclass(frozen=True)
class KekState:
    """The hospital's KEK after :func:`ensure_kek`: what is current, what is kept, and what was just done."""

    current: kek.Kek
    versions: tuple[int, ...]
    """Every version the Secret holds, oldest first."""
    observed_rotate_now: int
    created: bool = False
    rotated_from: int | None = None
    """The version that was current before this call rotated; None when it did not rotate."""


def _observed(live: Manifest, fallback: int) -> int:
    try:
        return int((live["metadata"].get("annotations") or {})[kek.OBSERVED_ROTATE_NOW])
    except (KeyError, ValueError):
        return fallback


def ensure_kek(
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
    if issued_version is None:
        # No key issued yet (onboarding): create first, and read only if one turns out to exist.
        try:
            return _issue_first(kube, hospital, namespace, rotate_now)
        except ApiException as exc:
            if exc.status != 409:
                raise
    live = kube.get(SECRET, kek.secret_name(hospital), namespace)
    if live is None:
        if issued_version is not None:
            raise KekMissingError(
                f"Secret {namespace}/{kek.secret_name(hospital)} with KEK version {issued_version} is gone; "
                "records wrapped with it cannot be unwrapped. Restore the Secret from backup, or clear "
                "status.kek to accept the loss and issue a new key."
            )
        return _issue_first(kube, hospital, namespace, rotate_now)
    current = kek.parse_secret(live)
    held = kek.versions(live)
    observed = _observed(live, observed_rotate_now)
    wanted = labels.tenancy_labels(hospital)
    live_labels = live["metadata"].get("labels") or {}
    if rotate_now != observed:
        return rotate_kek(kube, live, current, held, rotate_now, wanted)
    if any(live_labels.get(k) != v for k, v in wanted.items()):
        kube.merge_patch(SECRET, kek.secret_name(hospital), {"metadata": {"labels": wanted}}, namespace)
    return KekState(current, held, observed)


def _issue_first(kube: Kube, hospital: str, namespace: str, rotate_now: int) -> KekState:
    """Create the Secret with version 1 (a 409 if one exists: never overwritten)."""
    # The first key answers whatever rotateNow the spec already carries.
    first = kek.generate()
    kube.create(kek.build_secret(hospital, namespace, first, observed_rotate_now=rotate_now))
    return KekState(first, (first.version,), rotate_now, created=True)


def rotate_kek(
    kube: Kube, live: Manifest, current: kek.Kek, held: tuple[int, ...], rotate_now: int, wanted_labels: dict[str, str]
) -> KekState:
    """Add version N+1 and make it current, with the ``rotate_now`` it answers: one write, or none on conflict.

    The write is a PUT carrying the Secret's resourceVersion, so a concurrent
    change (another replica, a person) fails it with 409 rather than losing a
    version; the caller retries from a fresh read.
    """
    new = kek.generate(max(held, default=current.version) + 1)
    body = copy.deepcopy(live)
    body["data"] = {
        **(live.get("data") or {}),
        kek.CURRENT_VERSION_KEY: kek.b64(str(new.version)),
        **kek.version_data(new),
    }
    meta = body["metadata"]
    meta["labels"] = {**(meta.get("labels") or {}), **wanted_labels}
    meta["annotations"] = {**(meta.get("annotations") or {}), kek.OBSERVED_ROTATE_NOW: str(rotate_now)}
    kube.replace(body)
    return KekState(new, (*held, new.version), rotate_now, rotated_from=current.version)
