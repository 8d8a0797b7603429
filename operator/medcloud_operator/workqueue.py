"""The reconcile work queue: bounded concurrency, served by priority, counted in controller-runtime's metrics.

Kopf gives every object its own asyncio worker, and runs synchronous handlers
in one thread pool in arrival order. After a restart every object's resume
handler arrives at once, and a Hospital created at that moment would wait
behind all of them. Here every reconcile first takes a place in this queue:
at most ``workers`` run at a time, and a free worker always takes the most
urgent waiting item (a change someone is waiting for, then a resume, then a
status refresh, then the periodic safety net), first come first served within one priority.

The queue is the one place that sees every reconcile start and end, so it
keeps the metrics the usual controller dashboards and alerts read
(``controller_runtime_*``, ``workqueue_*``; docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import IntEnum
from typing import TypeVar

import kopf

from medcloud_operator import metrics

T = TypeVar("T")


class Priority(IntEnum):
    """Lower is served first."""

    CHANGE = 0
    """Created, changed, deleted, or a child drifted: someone is waiting for it."""
    RESUME = 1
    """Found at startup and not known to be settled."""
    REFRESH = 2
    """A child whose status moves with its tenant's use (a ResourceQuota's usage) changed: the owner's status
    follows, after every change and resume."""
    RESYNC = 3
    """The periodic safety net."""


class PriorityGate:
    """At most ``capacity`` holders; a freed place goes to the lowest priority number waiting, FIFO among equals.

    Pure asyncio (no threads, no I/O), so it is unit-tested on its own.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a gate needs at least one place")
        self.capacity = capacity
        self.held = 0
        self.waiting = 0
        # Cancelled waiters stay in the heap (removing them would cost a scan); release() skips them.
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self.held < self.capacity and not self.waiting:
            self.held += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (priority, next(self._order), future))
        self.waiting += 1
        try:
            await future
        except asyncio.CancelledError:
            if future.cancelled():
                self.waiting -= 1
            else:
                self.release()  # the place was handed over just as the waiter was cancelled: pass it on
            raise

    def release(self) -> None:
        """Hand the place to the most urgent waiter, or free it."""
        while self._heap:
            _, _, future = heapq.heappop(self._heap)
            if not future.done():
                self.waiting -= 1
                future.set_result(None)
                return
        self.held -= 1


class WorkQueue:
    """Every reconcile of the operator: waits in the gate, then runs in one of ``workers`` threads."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._gate = PriorityGate(workers)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        self._pending: Counter[tuple[str, str]] = Counter()
        self._closed = False
        self.completed = 0
        """Reconciles finished (any result) since the queue was made."""

    def idle(self) -> bool:
        """Nothing waiting for a worker and nothing running."""
        return self._gate.held == 0 and self._gate.waiting == 0

    def pending(self, controller: str, key: str) -> bool:
        """Whether work for this object (``key``, as given to :meth:`run`) is waiting or running."""
        return self._pending[(controller, key)] > 0

    async def run(self, controller: str, priority: Priority, work: Callable[[], T], key: str | None = None) -> T:
        """Run ``work`` (synchronous, blocking) when a worker is free; count it as one reconcile of ``controller``.

        ``key`` names the object, so that :meth:`pending` can tell a later trigger (the safety net) that
        a reconcile of it is already on its way, as controller-runtime's queue holds a key only once.
        """
        if key is None:
            return await self._run(controller, priority, work)
        self._pending[(controller, key)] += 1
        try:
            return await self._run(controller, priority, work)
        finally:
            self._pending[(controller, key)] -= 1
            if not self._pending[(controller, key)]:
                del self._pending[(controller, key)]

    async def _run(self, controller: str, priority: Priority, work: Callable[[], T]) -> T:
        metrics.WORKQUEUE_ADDS.labels(name=controller).inc()
        metrics.WORKQUEUE_DEPTH.labels(name=controller).inc()
        queued = time.monotonic()
        try:
            await self._gate.acquire(priority)
        finally:
            metrics.WORKQUEUE_DEPTH.labels(name=controller).dec()
        started = time.monotonic()
        metrics.WORKQUEUE_QUEUE_DURATION.labels(name=controller).observe(started - queued)
        metrics.ACTIVE_WORKERS.labels(controller=controller).inc()
        result = metrics.RESULT_ERROR
        try:
            # In a copy of this context, as Kopf runs its own synchronous handlers: Kopf's context
            # variables (its settings, the object being handled) are what kopf.event and its loggers read.
            context = contextvars.copy_context()
            if self._closed:
                # The operator is stopping (its cleanup closed the queue): this handler is cancelled, not failed.
                raise asyncio.CancelledError
            value = await asyncio.get_running_loop().run_in_executor(self._executor, context.run, work)
            result = metrics.RESULT_SUCCESS
            return value
        except kopf.TemporaryError:
            # Kopf retries it after the error's delay: controller-runtime's RequeueAfter.
            result = metrics.RESULT_REQUEUE_AFTER
            metrics.WORKQUEUE_RETRIES.labels(name=controller).inc()
            raise
        finally:
            elapsed = time.monotonic() - started
            self._gate.release()
            self.completed += 1
            metrics.ACTIVE_WORKERS.labels(controller=controller).dec()
            metrics.WORKQUEUE_WORK_DURATION.labels(name=controller).observe(elapsed)
            metrics.CR_RECONCILE_TIME.labels(controller=controller).observe(elapsed)
            metrics.CR_RECONCILE_TOTAL.labels(controller=controller, result=result).inc()
            if result == metrics.RESULT_ERROR:
                metrics.CR_RECONCILE_ERRORS.labels(controller=controller).inc()

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
