"""The safety net: one sweep per kind every resync interval, over small records kept from Kopf's watch.

Watches report every change, but not what no watch reports (a KEK Secret, which
the operator never streams), nor what changed while no operator ran (the child
watches start from the current version: :mod:`medcloud_operator.childwatch`).
The safety net finds those. It used to be a Kopf timer per object, which keeps
a task and the whole last body of every object (5,000 Hospitals: 5,000 timers
waking and 5,000 bodies held). It is now one task per kind:

- a record per object (its key, uid, and whether it is *settled*:
  :func:`medcloud_operator.handlers.common.is_settled`), kept by a Kopf event
  handler on the kind, so a tick reads nothing from the API server;
- every ``interval`` seconds the sweep queues, at the work queue's lowest
  priority, the objects that are not settled, plus each settled object's one
  full reconcile per ``full_resync_seconds`` (spread by uid); what is already
  queued or running is left alone. A kind whose resync always has work (a
  RecordStore's usage count) queues every object;
- a resync failing with a temporary error is retried after its delay, as
  Kopf's timer did; a permanent one waits for the next tick;
- it follows Kopf's peering pause (:mod:`medcloud_operator.peeringpause`):
  a paused replica skips its ticks.

No object is needed to hang the ticks on, so none carries a finalizer for it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from medcloud.kube.client import Kind
from medcloud_operator import metrics
from medcloud_operator.peeringpause import PeeringPause
from medcloud_operator.workqueue import Priority, WorkQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """What a tick needs of an object: no body."""

    name: str
    namespace: str | None
    uid: str
    settled: bool


@dataclass
class SweptKind:
    """A kind the safety net sweeps, and how."""

    kind: Kind
    resync: Callable[..., None]
    """The kind's resync, called as Kopf called its timer: ``name``, ``namespace``, ``memo``, ``logger``, ``retry``."""
    interval: float
    safety_net: bool
    """Settled objects are skipped (but for their full reconcile); False: every object, every tick."""
    records: dict[str, Record] = field(default_factory=dict)

    @property
    def controller(self) -> str:
        return self.kind.kind.lower()


Due = Callable[[str, float, float], bool]
"""Whether a settled object (by uid) has its full reconcile on the tick at ``now``: (uid, now, interval)."""


def to_sweep(swept: SweptKind, now: float, *, pending: Callable[[str], bool], due: Due) -> tuple[list[str], int, int]:
    """The keys a tick queues, and how many it skipped as already pending and as settled (pure)."""
    chosen: list[str] = []
    skipped_pending = skipped_settled = 0
    for key, record in swept.records.items():
        if pending(key):
            skipped_pending += 1
        elif swept.safety_net and record.settled and not due(record.uid, now, swept.interval):
            skipped_settled += 1
        else:
            chosen.append(key)
    return chosen, skipped_pending, skipped_settled


def record_key(namespace: str | None, name: str) -> str:
    """The work queue's key of an object, and its record's: ``<namespace>/<name>`` (empty namespace: cluster-scoped)."""
    return f"{namespace or ''}/{name}"


class SafetyNet:
    """The sweeps of every registered kind (see the module's docstring)."""

    def __init__(self, kinds: Iterable[SweptKind] = ()) -> None:
        self.kinds = {swept.kind.kind: swept for swept in kinds}
        self._retrying: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._kopf_context: Callable[[], contextvars.Context | None] = lambda: None

    def add(self, swept: SweptKind) -> None:
        self.kinds[swept.kind.kind] = swept

    def observe(self, kind: str, event_type: str | None, body: Mapping[str, Any], settled: bool) -> None:
        """Keep (or, once deleted, drop) the record of an object from its watch event."""
        swept = self.kinds[kind]
        meta = body["metadata"]
        key = record_key(meta.get("namespace"), meta["name"])
        if event_type == "DELETED":
            swept.records.pop(key, None)
            return
        swept.records[key] = Record(meta["name"], meta.get("namespace"), str(meta.get("uid") or ""), settled)

    async def run(
        self,
        memo: kopf.Memo,
        queue: WorkQueue,
        pause: PeeringPause,
        *,
        due: Due,
        kopf_context: Callable[[], contextvars.Context | None] = lambda: None,
    ) -> None:
        """Sweep every kind, each at its own interval, until cancelled (resyncs in a copy of Kopf's context)."""
        self._kopf_context = kopf_context
        try:
            await asyncio.gather(*(self._sweep(swept, memo, queue, pause, due) for swept in self.kinds.values()))
        finally:
            for task in self._tasks:
                task.cancel()

    async def _sweep(self, swept: SweptKind, memo: kopf.Memo, queue: WorkQueue, pause: PeeringPause, due: Due) -> None:
        logger = logging.getLogger(f"medcloud_operator.safetynet.{swept.kind.plural}")
        while True:
            await asyncio.sleep(swept.interval)
            if pause.paused:
                continue
            metrics.SAFETY_NET_SWEEPS.labels(kind=swept.kind.kind).inc()

            def pending(key: str) -> bool:
                return queue.pending(swept.controller, key) or (swept.kind.kind, key) in self._retrying

            chosen, skipped_pending, skipped_settled = to_sweep(swept, time.time(), pending=pending, due=due)
            if skipped_pending:
                metrics.SETTLED_SKIPS.labels(kind=swept.kind.kind, trigger="pending").inc(skipped_pending)
            if skipped_settled:
                metrics.SETTLED_SKIPS.labels(kind=swept.kind.kind, trigger="resync").inc(skipped_settled)
            borrowed = self._kopf_context()
            for key in chosen:
                resync = self._resync(swept, key, memo, queue, logger)
                loop = asyncio.get_running_loop()
                task = (
                    loop.create_task(resync) if borrowed is None else loop.create_task(resync, context=borrowed.copy())
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def retry_later(self, kind: str, key: str, delay: float, memo: kopf.Memo, queue: WorkQueue) -> None:
        """An object whose resume failed for now: its resync after ``delay``, retried like the sweep's own.

        Meanwhile the sweep leaves it alone, as it does an object it is retrying itself.
        """
        swept = self.kinds[kind]
        logger = logging.getLogger(f"medcloud_operator.safetynet.{swept.kind.plural}")
        marker = (kind, key)

        async def later() -> None:
            self._retrying.add(marker)
            try:
                await asyncio.sleep(delay)
            finally:
                self._retrying.discard(marker)
            await self._resync(swept, key, memo, queue, logger)

        task = asyncio.get_running_loop().create_task(later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync(
        self, swept: SweptKind, key: str, memo: kopf.Memo, queue: WorkQueue, logger: logging.Logger
    ) -> None:
        """One object's resync, retried after a temporary error's delay while the object exists."""
        retry = 0
        while (record := swept.records.get(key)) is not None:
            work = functools.partial(
                swept.resync, name=record.name, namespace=record.namespace, memo=memo, logger=logger, retry=retry
            )
            try:
                await queue.run(swept.controller, Priority.RESYNC, work, key=key)
                return
            except kopf.PermanentError as exc:
                logger.info("%s %s: %s", swept.kind.kind, key, exc)  # its status says so; the next tick tries again
                return
            except kopf.TemporaryError as exc:
                retry += 1
                marker = (swept.kind.kind, key)
                self._retrying.add(marker)
                try:
                    await asyncio.sleep(exc.delay or 1.0)
                finally:
                    self._retrying.discard(marker)
            except Exception:
                logger.exception("%s %s: the safety net's reconcile failed", swept.kind.kind, key)
                return
