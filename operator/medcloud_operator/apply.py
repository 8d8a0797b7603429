"""Idempotent apply: read, compare, and write only what differs.

Server-side apply would also converge, but every apply is a write request the
API server must process, even when it changes nothing. Reading first and
comparing here means an operator with nothing to do sends no writes at all.

What "the same" means, per object:

- metadata: every label and annotation the operator wants is present with its
  value; keys under the operator's own prefixes (``medcloud.io/``,
  ``pod-security.kubernetes.io/``) that it does not want are absent. Other
  keys, added by people or tools, are left alone.
- the kind's owned fields (a NetworkPolicy's ``spec``, a Role's ``rules``,
  ...): equal as a whole, so a rule someone added by hand is removed. Empty
  maps and lists equal absent ones, and quantities compare by value (the API
  server rewrites ``1024Mi`` as ``1Gi``).
- the kind's defaulted fields (a Deployment's or Service's ``spec``): the API
  server fills in dozens of defaults and allocations (a cluster IP, a rollout
  strategy, probe timings), so "the same" means every value the operator sets
  is present, in lists of the same length; what the server added is ignored.
  Builders therefore spell out every field whose tampering matters (security
  contexts, ``privileged: false``), so that changing one is seen as drift.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kubernetes.client.exceptions import ApiException

from medcloud.kube.client import Kind, Manifest, kind_of
from medcloud.tenancy import labels
from medcloud_operator.kube import Kube
from medcloud_operator.quantities import quantity

# Maps whose values are resource quantities, in the kinds the operator writes
# (ResourceQuota spec.hard, LimitRange spec.limits[*].*, a container's resources.requests and .limits).
QUANTITY_MAPS = frozenset(
    {"hard", "default", "defaultRequest", "max", "min", "maxLimitRequestRatio", "requests", "limits"}
)


class Action(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    RECREATED = "recreated"
    UNCHANGED = "unchanged"
    DELETED = "deleted"


@dataclass(frozen=True)
class Applied:
    """What apply did to one object."""

    kind: str
    name: str
    namespace: str | None
    action: Action
    obj: Manifest = field(default_factory=dict, repr=False, compare=False)
    """The object as the API server holds it now (empty after a delete)."""

    @property
    def changed(self) -> bool:
        return self.action is not Action.UNCHANGED

    def describe(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name} {self.action.value}"


class TerminatingError(RuntimeError):
    """The object exists but is being deleted; it cannot be updated until it is gone."""


class OwnWrites:
    """The resourceVersion of every object the operator last wrote, and the writes still in flight.

    A watch event that carries exactly that version is the echo of the
    operator's own write, not drift, and needs no reconcile. The API server
    may send the echo before the write's own response has arrived, so a write
    is marked in flight first (:meth:`writing`) and :meth:`is_own` can wait for
    it to finish rather than take its echo for someone else's change.
    """

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str | None, str], str] = {}
        self._in_flight: dict[tuple[str, str | None, str], int] = {}
        self._changed = threading.Condition()

    @contextmanager
    def writing(self, kind: str, namespace: str | None, name: str) -> Iterator[None]:
        """Around a write of this object: its echo is recognised even when it arrives before the response."""
        key = (kind, namespace, name)
        with self._changed:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            yield
        finally:
            with self._changed:
                if self._in_flight[key] == 1:
                    del self._in_flight[key]
                else:
                    self._in_flight[key] -= 1
                self._changed.notify_all()

    def record(self, obj: Manifest) -> None:
        meta = obj.get("metadata", {})
        version = meta.get("resourceVersion")
        if version:
            with self._changed:
                self._versions[(obj["kind"], meta.get("namespace"), meta["name"])] = version

    def forget_namespace(self, namespace: str) -> None:
        """Drop what was recorded for a namespace and the objects in it (the tenant is gone)."""
        with self._changed:
            for key in [k for k in self._versions if k[1] == namespace or (k[0] == "Namespace" and k[2] == namespace)]:
                del self._versions[key]

    def forget(self, kind: str, namespace: str | None, name: str) -> None:
        """Drop what was recorded for one object (it was deleted)."""
        with self._changed:
            self._versions.pop((kind, namespace, name), None)

    def in_flight(self, kind: str, namespace: str | None, name: str) -> bool:
        with self._changed:
            return (kind, namespace, name) in self._in_flight

    def is_own(
        self, kind: str, namespace: str | None, name: str, resource_version: str | None, *, wait: float = 0.0
    ) -> bool:
        """Whether ``resource_version`` is the operator's own last write; ``wait`` seconds at most for one in flight.

        Waiting blocks the calling thread: only worker threads wait, never the event loop.
        """
        key = (kind, namespace, name)
        with self._changed:
            if wait:
                self._changed.wait_for(lambda: key not in self._in_flight, timeout=wait)
            return resource_version is not None and self._versions.get(key) == resource_version


def _quantity(value: Any) -> Any:
    if isinstance(value, str | int):
        try:
            return quantity(value)
        except ValueError:
            return value
    return value


def normalize(value: Any, key: str | None = None) -> Any:
    """A comparable form: empty and absent are alike, quantities are numbers."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            item = normalize(v, k)
            if key in QUANTITY_MAPS:
                item = _quantity(item)
            if item not in (None, {}, []):
                out[k] = item
        return out
    if isinstance(value, list):
        return [normalize(item, key) for item in value]
    return value


def _owned(key: str) -> bool:
    return key.startswith(labels.OWNED_PREFIXES)


def _map_matches(desired: dict[str, str], live: dict[str, str]) -> bool:
    if any(live.get(k) != v for k, v in desired.items()):
        return False
    return not any(_owned(k) and k not in desired for k in live)


def _merged_map(desired: dict[str, str], live: dict[str, str]) -> dict[str, str]:
    merged = {k: v for k, v in live.items() if not (_owned(k) and k not in desired)}
    merged.update(desired)
    return merged


def _field(obj: Manifest, name: str) -> Any:
    """A top-level field, normalized; empty is absent here too (the API server omits a ConfigMap's empty ``data``)."""
    value = normalize(obj.get(name))
    return None if value in ({}, []) else value


def covers(desired: Any, live: Any) -> bool:
    """Whether ``live`` holds every value of ``desired`` (both normalized); keys only ``live`` has are ignored.

    Lists must have the same length and cover element by element, so an
    added or removed container, port or env entry is a difference. A value
    absent from ``live`` matches a desired ``false``, ``0`` or ``""``: the API
    server omits Go's zero values of plain fields (``hostNetwork: false``).
    """
    if isinstance(desired, dict):
        live_map = {} if live is None else live
        return isinstance(live_map, dict) and all(covers(v, live_map.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(map(covers, desired, live))
    if live is None:
        return desired is False or desired == 0 or desired == ""
    return bool(desired == live)


def differences(desired: Manifest, live: Manifest, kind: Kind) -> list[str]:
    """Names of the parts of ``live`` that do not match ``desired`` (empty: nothing to write)."""
    found = []
    for part in ("labels", "annotations"):
        if not _map_matches(desired["metadata"].get(part) or {}, live["metadata"].get(part) or {}):
            found.append(f"metadata.{part}")
    for owned in kind.owned_fields:
        if _field(desired, owned) != _field(live, owned):
            found.append(owned)
    for defaulted in kind.defaulted_fields:
        if not covers(normalize(desired.get(defaulted)), normalize(live.get(defaulted))):
            found.append(defaulted)
    return found


def merged(desired: Manifest, live: Manifest, kind: Kind) -> Manifest:
    """``live`` with the operator's metadata keys and owned fields put back; ready to PUT."""
    body = copy.deepcopy(live)
    meta = body["metadata"]
    for part in ("labels", "annotations"):
        meta[part] = _merged_map(desired["metadata"].get(part) or {}, meta.get(part) or {})
    # A defaulted field is replaced whole too: the server completes it again on
    # the update (and keeps what it allocated, such as a Service's cluster IP).
    for owned in (*kind.owned_fields, *kind.defaulted_fields):
        if owned in desired:
            body[owned] = copy.deepcopy(desired[owned])
        else:
            body.pop(owned, None)
    return body


def apply(
    kube: Kube, desired: Manifest, own_writes: OwnWrites | None = None, *, expect_absent: bool = False
) -> Applied:
    """Create ``desired`` if absent, update it if it differs, do nothing (no request but a GET) if it matches.

    ``expect_absent`` (the owner was never reconciled: onboarding) creates first and reads only when
    the object turns out to exist (409): a new tenant's dozen children cost no GET each.
    """
    kind = kind_of(desired)
    meta = desired["metadata"]
    name, namespace = meta["name"], meta.get("namespace")
    with own_writes.writing(kind.kind, namespace, name) if own_writes is not None else nullcontext():
        return _apply(kube, kind, desired, own_writes, expect_absent)


def _apply(kube: Kube, kind: Kind, desired: Manifest, own_writes: OwnWrites | None, expect_absent: bool) -> Applied:
    name, namespace = desired["metadata"]["name"], desired["metadata"].get("namespace")
    if expect_absent:
        try:
            written = kube.create(desired)
        except ApiException as exc:
            if exc.status != 409:
                raise
        else:
            if own_writes is not None:
                own_writes.record(written)
            return Applied(kind.kind, name, namespace, Action.CREATED, written)
    live = kube.get(kind, name, namespace)
    if live is None:
        written = kube.create(desired)
        action = Action.CREATED
    else:
        if live["metadata"].get("deletionTimestamp"):
            raise TerminatingError(f"{kind.kind} {name} is being deleted")
        diff = differences(desired, live, kind)
        if not diff:
            return Applied(kind.kind, name, namespace, Action.UNCHANGED, live)
        if any(normalize(desired.get(f)) != normalize(live.get(f)) for f in kind.immutable_fields):
            kube.delete(kind, name, namespace)
            written = kube.create(desired)
            action = Action.RECREATED
        else:
            written = kube.replace(merged(desired, live, kind))
            action = Action.UPDATED
    if own_writes is not None:
        own_writes.record(written)
    return Applied(kind.kind, name, namespace, action, written)


def prune(
    kube: Kube, kinds: tuple[Kind, ...], namespace: str | None, selector: str, desired: list[Manifest]
) -> list[Applied]:
    """Delete objects of ``kinds`` in ``namespace`` (None: cluster-scoped kinds) that match ``selector`` but are
    no longer desired."""
    wanted = {(d["kind"], d["metadata"]["name"]) for d in desired}
    removed = []
    for kind in kinds:
        for live in kube.list(kind, namespace, label_selector=selector):
            name = live["metadata"]["name"]
            if (kind.kind, name) not in wanted and kube.delete(kind, name, namespace):
                removed.append(Applied(kind.kind, name, namespace, Action.DELETED))
    return removed
