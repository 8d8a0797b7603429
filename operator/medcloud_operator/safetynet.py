"""The safety net: one sweep every ``resync_seconds`` over what the watches say, instead of a timer per object.

Kopf runs a timer as a task per object and keeps that object's whole last body
(managedFields included) for it: at 5,000 Hospitals, 5,000 sleeping tasks and
5,000 bodies, and a wake-up per object per tick although nearly every one is
settled. Here each object is a small record kept from its watch events (kind,
name, uid, whether it is settled: :func:`~medcloud_operator.handlers.common.is_settled`
of its last body), and one task wakes once per tick, walks the records and
queues a reconcile (priority RESYNC, behind everything else) only for an object
that is not settled, or whose one full reconcile of the period falls on this
tick (chosen by its uid, so they are spread), and that has nothing queued already.

The tick itself is a Kopf timer on one object, the operator's own namespace
(registered by ``medcloud_operator.main``), so that whatever pauses Kopf's
handlers (a peer of higher priority) pauses the sweep too: a standby replica
reconciles nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import kopf

from medcloud_operator import metrics
from medcloud_operator.workqueue import Priority, WorkQueue

logger = logging.getLogger(__name__)


def tick_slot(uid: str, ticks: int) -> int:
    """The tick of the period on which the object with ``uid`` gets its full reconcile."""
    return int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16) % ticks


@dataclass(slots=True)
class Tracked:
    """What the sweep needs of one object; no body."""

    controller: str
    kind: str
    name: str
    namespace: str | None
    slot: int
    settled: bool
    resync: Callable[..., None]

    @property
    def key(self) -> str:
        return f"{self.namespace or ''}/{self.name}"


class SafetyNet:
    """The records of every safety-netted object and the sweep over them."""

    def __init__(self, interval: float, period: float) -> None:
        self.interval = interval
        self.ticks = max(1, round(period / interval))
        self._objects: dict[tuple[str, str], Tracked] = {}
        self._lock = threading.Lock()
        # Ticks are counted from the clock's, so a restart keeps each object's full reconcile where it was.
        self._tick = int(time.time() // interval)
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._objects)

    def observe(
        self,
        controller: str,
        kind: str,
        name: str,
        namespace: str | None,
        uid: str,
        settled: bool,
        resync: Callable[..., None],
    ) -> None:
        """An object as its watch event shows it (``settled``: judged from that body)."""
        tracked = Tracked(controller, kind, name, namespace, tick_slot(uid, self.ticks), settled, resync)
        with self._lock:
            self._objects[(controller, tracked.key)] = tracked

    def forget(self, controller: str, name: str, namespace: str | None) -> None:
        with self._lock:
            self._objects.pop((controller, f"{namespace or ''}/{name}"), None)

    def due(self, tick: int, queue: WorkQueue) -> list[Tracked]:
        """The objects to reconcile on ``tick``; each one skipped is counted as such."""
        with self._lock:
            objects = list(self._objects.values())
        chosen = []
        for tracked in objects:
            if queue.pending(tracked.controller, tracked.key):
                metrics.SETTLED_SKIPS.labels(kind=tracked.kind, trigger="pending").inc()
            elif tracked.settled and tracked.slot != tick % self.ticks:
                metrics.SETTLED_SKIPS.labels(kind=tracked.kind, trigger="resync").inc()
            else:
                chosen.append(tracked)
        return chosen

    def sweep(self, queue: WorkQueue, memo: kopf.Memo) -> int:
        """One tick: queue a reconcile of each object due (as tasks of the running loop); how many."""
        self._tick += 1
        for tracked in self.due(self._tick, queue):
            task = asyncio.create_task(self._reconcile(queue, memo, tracked))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(self._tasks)

    async def _reconcile(self, queue: WorkQueue, memo: kopf.Memo, tracked: Tracked) -> None:
        def work() -> None:
            tracked.resync(name=tracked.name, namespace=tracked.namespace, memo=memo, logger=logger)

        try:
            await queue.run(tracked.controller, Priority.RESYNC, work, key=tracked.key)
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            # Recorded in the object's status and Events; its own triggers retry it, and so does the next tick.
            logger.debug("%s %s: %s", tracked.kind, tracked.key, exc)
        except Exception:
            logger.exception("%s %s: the safety net's reconcile failed", tracked.kind, tracked.key)
