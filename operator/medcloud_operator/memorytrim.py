"""Handing freed heap memory back to the system once a burst of reconciles is over.

Onboarding a thousand Hospitals parses tens of thousands of JSON bodies in the
work queue's threads. Python frees them, but glibc keeps the freed pages in its
heaps (one arena per thread that allocated), so the operator's resident memory
stays at the burst's peak for as long as it runs: 331 MB after onboarding 1,000
Hospitals against 141 MB for the same operator restarted (bench/bench_scale.py).
``malloc_trim(0)`` returns every free page of every arena to the system. It
costs milliseconds and only matters after a burst, so it runs when the queue
has been idle for a check interval after doing work, never during one.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Trim = Callable[[], object]


def glibc_trim() -> Trim | None:
    """glibc's ``malloc_trim(0)``; None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


def should_trim(completed: int, trimmed_at: int, idle: bool) -> bool:
    """Trim once per burst: work was done since the last trim and none is waiting or running now."""
    return idle and completed != trimmed_at


async def trim_after_bursts(
    completed: Callable[[], int], idle: Callable[[], bool], interval: float, trim: Trim | None = None
) -> None:
    """Every ``interval`` seconds, trim if a burst of reconciles ended since the last check; until cancelled."""
    release = trim if trim is not None else glibc_trim()
    if release is None:
        log.debug("no malloc_trim in this C library: freed heap memory stays with the process")
        return
    trimmed_at = completed()
    while True:
        await asyncio.sleep(interval)
        done = completed()
        if should_trim(done, trimmed_at, idle()):
            # ctypes releases the GIL for the call; the event loop waits only for the trim itself.
            await asyncio.to_thread(release)
            trimmed_at = done
