"""Whether Kopf's peering pauses this replica, followed for the work that runs outside Kopf.

Kopf pauses its own watch streams, timers and daemons while a peer of higher
priority (or, unsharded, of the same priority) is alive, but keeps that state
to itself (kopf 1.45: the ``operator_paused`` toggle set made in
``spawn_tasks``, handed to no handler). The child watches
(:mod:`medcloud_operator.childwatch`) and the safety net
(:mod:`medcloud_operator.safetynet`) run outside Kopf, so they follow the same
peering objects' status with the same rule (:func:`pauses`, Kopf's
``process_peering_event``), the same identity (``kopf.run(identity=...)``) and
the same priority: when Kopf pauses this replica, they pause too, within one
poll. A standalone replica is never paused.
"""

from __future__ import annotations

import asyncio
import datetime
import getpass
import logging
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from medcloud.kube.client import Kind, Kube
from medcloud_operator import metrics

log = logging.getLogger(__name__)

DEFAULT_LIFETIME_SECONDS = 60
"""A peer's lifetime when its record names none (Kopf's default)."""


def own_identity() -> str:
    """This process's peering identity, made as Kopf makes it: the pod's name, else ``user@host/time/random``."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S")
    return f"{getpass.getuser()}@{socket.gethostname()}/{now}/{secrets.token_hex(2)}"


@dataclass(frozen=True)
class Self:
    """How this replica appears among its peers."""

    identity: str
    priority: int
    sharded: bool
    """Kopf's ``watching.shard_selectors`` are set: peers of the same priority then share the work."""


def _is_dead(record: Mapping[str, Any], now: datetime.datetime) -> bool:
    lastseen = record.get("lastseen")
    if not lastseen:
        return False  # Kopf takes a record without a time as seen now
    seen = datetime.datetime.fromisoformat(str(lastseen))
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=datetime.UTC)
    lifetime = datetime.timedelta(seconds=int(record.get("lifetime") or DEFAULT_LIFETIME_SECONDS))
    return seen + lifetime <= now


def pauses(status: Mapping[str, Any], me: Self, now: datetime.datetime) -> bool:
    """Kopf's rule over a peering object's ``status`` (identity -> priority, lastseen, lifetime): pause or act."""
    live = [
        int(record.get("priority") or 0)
        for identity, record in status.items()
        if identity != me.identity and isinstance(record, Mapping) and not _is_dead(record, now)
    ]
    if any(priority > me.priority for priority in live):
        return True
    return not me.sharded and any(priority == me.priority for priority in live)


@dataclass(frozen=True)
class PeeringObject:
    kind: Kind
    name: str
    namespace: str | None = None


class PeeringPause:
    """Polls the peering objects every ``interval`` seconds; :attr:`paused` says what Kopf decides from them."""

    def __init__(
        self, kube: Kube, objects: Sequence[PeeringObject], me: Self, *, mandatory: bool, interval: float = 5.0
    ) -> None:
        self._kube = kube
        self._objects = tuple(objects)
        self._me = me
        self._mandatory = mandatory
        self._interval = interval
        # Until the first read, act only without peers to wait for.
        self._paused = bool(self._objects)
        self._active = asyncio.Event()
        self._set(self._paused)

    @property
    def paused(self) -> bool:
        return self._paused

    async def wait_active(self) -> None:
        """Return once this replica may act (at once when it may)."""
        await self._active.wait()

    def _set(self, paused: bool) -> None:
        if paused != self._paused:
            log.info("Child watches and safety net %s (peering)", "paused" if paused else "resumed")
        self._paused = paused
        metrics.PEERING_PAUSED.set(1 if paused else 0)
        if paused:
            self._active.clear()
        else:
            self._active.set()

    def _decide(self) -> bool:
        now = datetime.datetime.now(datetime.UTC)
        for obj in self._objects:
            body = self._kube.get(obj.kind, obj.name, obj.namespace)
            if body is None:
                if self._mandatory:
                    return True  # Kopf too pauses while its peering is missing
                continue
            if pauses(body.get("status") or {}, self._me, now):
                return True
        return False

    async def run(self) -> None:
        """Follow the peering objects until cancelled; an unreadable object keeps the last decision."""
        if not self._objects:
            return
        while True:
            try:
                self._set(await asyncio.to_thread(self._decide))
            except (ApiException, HTTPError, OSError) as exc:
                keeping = "paused" if self._paused else "active"
                log.warning("Cannot read the peering objects (keeping %s): %s", keeping, exc)
            await asyncio.sleep(self._interval)
