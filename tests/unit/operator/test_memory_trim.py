"""When freed heap memory goes back to the system: once after each burst of reconciles, never during one."""

from __future__ import annotations

import asyncio

import pytest

from medcloud_operator.memorytrim import glibc_trim, should_trim, trim_after_bursts
from medcloud_operator.workqueue import Priority, WorkQueue


def test_a_burst_is_trimmed_once_and_only_when_idle() -> None:
    assert not should_trim(completed=0, trimmed_at=0, idle=True)  # nothing done since the last trim
    assert not should_trim(completed=10, trimmed_at=0, idle=False)  # still busy
    assert should_trim(completed=10, trimmed_at=0, idle=True)
    assert not should_trim(completed=10, trimmed_at=10, idle=True)  # that burst was trimmed


def test_glibc_malloc_trim_is_found_on_linux() -> None:
    trim = glibc_trim()
    if trim is None:
        pytest.skip("not glibc")
    trim()


def test_the_queue_counts_finished_work_and_says_when_it_is_idle() -> None:
    async def scenario() -> list[object]:
        queue = WorkQueue(1)
        gate = asyncio.Event()
        loop = asyncio.get_running_loop()
        trims: list[int] = []
        trimmer = loop.create_task(
            trim_after_bursts(lambda: queue.completed, queue.idle, 0.01, trim=lambda: trims.append(queue.completed))
        )
        seen: list[object] = [queue.idle(), queue.completed]

        def blocked() -> None:
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()

        running = loop.create_task(queue.run("hospital", Priority.CHANGE, blocked))
        while queue.idle():
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)  # several checks while the burst runs: none trims
        seen += [queue.idle(), list(trims)]
        gate.set()
        await running
        while not trims:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # more idle checks: the one burst was trimmed once
        seen += [queue.idle(), queue.completed, trims]
        trimmer.cancel()
        queue.close()
        return seen

    assert asyncio.run(scenario()) == [True, 0, False, [], True, 1, [1]]
