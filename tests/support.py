"""Small helpers shared by the tests: polling, a record client on the real MinIO, and hashing byte streams."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

from medcloud.records.client import InMemoryKeyProvider, RecordClient
from medcloud.records.keys import KeyRing

T = TypeVar("T")


def connect_records(minio_server: Any, bucket: str, ring: KeyRing, **options: Any) -> RecordClient:
    """A record client on ``bucket`` of the real MinIO, as its root user, with ``ring``'s keys."""
    return RecordClient.connect(
        minio_server.endpoint,
        minio_server.access_key,
        minio_server.secret_key,
        bucket,
        InMemoryKeyProvider(ring),
        secure=minio_server.secure,
        **options,
    )


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 60.0, interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns a truthy value; fail with ``what`` after ``timeout``.

    The deadline only bounds a test that would otherwise hang: no test asserts on
    how long anything took.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except Exception as exc:
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


class PatternReader:
    """``total`` bytes of ``block`` over and over, produced on the fly and hashed as they are read."""

    def __init__(self, total: int, block: bytes) -> None:
        self.remaining = total
        self.digest = hashlib.sha256()
        self._block = block

    def read(self, size: int = -1) -> bytes:
        size = min(self.remaining, len(self._block) if size < 0 else min(size, len(self._block)))
        self.remaining -= size
        data = self._block[:size]
        self.digest.update(data)
        return data


class HashingWriter:
    """A sink that keeps only the hash and the count of the bytes written to it."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.count += len(data)
        return len(data)


def fuzz(strategy: Any, send: Callable[[Any], None], examples: int) -> None:
    """Send ``examples`` cases drawn from a schemathesis ``strategy``; Hypothesis shrinks any failure."""
    from hypothesis import HealthCheck, Phase, given, settings

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        send(case)

    run()
