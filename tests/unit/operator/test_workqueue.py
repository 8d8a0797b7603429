"""The work queue: the most urgent item goes first; every reconcile is counted in controller-runtime's metrics."""

from __future__ import annotations

import asyncio
import threading

import kopf
import pytest
from prometheus_client import REGISTRY

from medcloud_operator.workqueue import Priority, PriorityGate, WorkQueue


def value(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def test_a_freed_place_goes_to_the_most_urgent_waiter_first_come_first_served() -> None:
    async def scenario() -> list[str]:
        gate = PriorityGate(1)
        order: list[str] = []
        await gate.acquire(Priority.RESYNC)  # the one place is taken

        async def wait(label: str, priority: Priority) -> None:
            await gate.acquire(priority)
            order.append(label)
            gate.release()

        waiters = [
            asyncio.create_task(wait("resync-1", Priority.RESYNC)),
            asyncio.create_task(wait("resume-1", Priority.RESUME)),
            asyncio.create_task(wait("resync-2", Priority.RESYNC)),
            asyncio.create_task(wait("refresh-1", Priority.REFRESH)),
            asyncio.create_task(wait("change-1", Priority.CHANGE)),
            asyncio.create_task(wait("change-2", Priority.CHANGE)),
        ]
        await asyncio.sleep(0)  # every waiter is queued
        assert gate.waiting == 6
        gate.release()
        await asyncio.gather(*waiters)
        assert (gate.held, gate.waiting) == (0, 0)
        return order

    assert asyncio.run(scenario()) == [
        "change-1",
        "change-2",
        "resume-1",
        "refresh-1",
        "resync-1",
        "resync-2",
    ]


def test_a_cancelled_waiter_gives_up_its_turn_and_holds_no_place() -> None:
    async def scenario() -> None:
        gate = PriorityGate(1)
        await gate.acquire(Priority.CHANGE)
        cancelled = asyncio.create_task(gate.acquire(Priority.CHANGE))
        later = asyncio.create_task(gate.acquire(Priority.RESYNC))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert gate.waiting == 1
        gate.release()
        await later  # the place skipped the cancelled waiter
        assert (gate.held, gate.waiting) == (1, 0)
        gate.release()
        assert gate.held == 0

    asyncio.run(scenario())


def test_never_more_than_the_workers_run_at_once() -> None:
    queue = WorkQueue(2)
    running, peak = 0, 0
    lock = threading.Lock()
    release = threading.Event()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1

    async def scenario() -> None:
        tasks = [asyncio.create_task(queue.run("unit-bounded", Priority.CHANGE, work)) for _ in range(6)]
        await asyncio.sleep(0.05)
        assert value("workqueue_depth", name="unit-bounded") == 4
        assert value("controller_runtime_active_workers", controller="unit-bounded") == 2
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    queue.close()
    assert peak == 2
    assert value("workqueue_depth", name="unit-bounded") == 0
    assert value("controller_runtime_active_workers", controller="unit-bounded") == 0
    assert value("workqueue_adds_total", name="unit-bounded") == 6


def test_each_outcome_is_counted_as_controller_runtime_counts_it() -> None:
    queue = WorkQueue(1)

    def requeue() -> None:
        raise kopf.TemporaryError("the API server is away", delay=1)

    def fail() -> None:
        raise RuntimeError("a bug")

    async def scenario() -> None:
        assert await queue.run("unit-outcomes", Priority.CHANGE, lambda: 42) == 42
        with pytest.raises(kopf.TemporaryError):
            await queue.run("unit-outcomes", Priority.RESUME, requeue)
        with pytest.raises(RuntimeError):
            await queue.run("unit-outcomes", Priority.RESYNC, fail)

    asyncio.run(scenario())
    queue.close()
    total = "controller_runtime_reconcile_total"
    assert value(total, controller="unit-outcomes", result="success") == 1
    assert value(total, controller="unit-outcomes", result="requeue_after") == 1
    assert value(total, controller="unit-outcomes", result="error") == 1
    assert value("controller_runtime_reconcile_errors_total", controller="unit-outcomes") == 1
    assert value("workqueue_retries_total", name="unit-outcomes") == 1
    assert value("controller_runtime_reconcile_time_seconds_count", controller="unit-outcomes") == 3
    assert value("workqueue_work_duration_seconds_count", name="unit-outcomes") == 3
    assert value("workqueue_queue_duration_seconds_count", name="unit-outcomes") == 3


def test_an_object_is_pending_while_its_work_waits_or_runs_and_not_after() -> None:
    async def scenario() -> list[bool]:
        queue = WorkQueue(1)
        release = threading.Event()
        seen: list[bool] = []
        running = asyncio.create_task(queue.run("hospital", Priority.CHANGE, release.wait, key="/maple"))
        waiting = asyncio.create_task(queue.run("hospital", Priority.RESYNC, lambda: None, key="/oak"))
        await asyncio.sleep(0)
        seen += [queue.pending("hospital", "/maple"), queue.pending("hospital", "/oak")]
        seen.append(queue.pending("hospital", "/elm"))
        release.set()
        await asyncio.gather(running, waiting)
        seen += [queue.pending("hospital", "/maple"), queue.pending("hospital", "/oak")]
        queue.close()
        return seen

    assert asyncio.run(scenario()) == [True, True, False, False, False]
