"""Watches of the operator's child objects, outside Kopf: from the current resourceVersion, by label, no memory.

A child (a tenant namespace's quota, a policy, an app's Deployment) matters to
the operator only when someone else changes or deletes it: its owner is then
reconciled (drift repair, :func:`medcloud_operator.handlers.common.register_drift_handlers`).
Kopf would list every child at start and keep a small state per child (thirteen
children a Hospital: 65,000 objects at 5,000 Hospitals, all listed again on
every restart, before a new Hospital's turn). These watches instead

- start from the collection's resourceVersion now (a LIST of at most one
  object): what changed while no operator ran is the safety net's to find
  (:mod:`medcloud_operator.safetynet`: each object's full reconcile comes in
  its period), not a listing's;
- select on the server by label, so only the operator's own children arrive;
- keep nothing per object: an event is judged (the echo of the operator's own
  write, or drift) and either dropped or its owner's repair queued;
- start again from the last resourceVersion seen when the server ends a stream
  (every ``timeout_seconds``), and from the current one after 410 Gone (the
  version is too old) or an error, counted in ``medcloud_child_watch_restarts_total``;
- follow Kopf's peering pause (:mod:`medcloud_operator.peeringpause`): while a
  peer acts, this replica drops its child events, and starts from the
  current version when it acts again.

Each stream is read by a thread of its own (the client is synchronous); its
events are handed to the operator's event loop, where the handlers run as
Kopf's would, in a context carrying Kopf's settings (Events are posted through
Kopf's poster).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from medcloud.kube.client import Kind, Kube, Manifest
from medcloud_operator import metrics
from medcloud_operator.peeringpause import PeeringPause

log = logging.getLogger(__name__)

ChildEventHandler = Callable[[str, Manifest, kopf.Memo, logging.Logger], Awaitable[None]]
"""Called with the event type (ADDED, MODIFIED, DELETED), the child, Kopf's memo and a logger."""

ChildEvent = tuple[str, Manifest]
"""A watch event as a stream hands it over: its type and the child."""

RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits before starting a failed watch again, growing while it keeps failing."""


def label_selector(labels: Mapping[str, Any]) -> str:
    """Kopf's handler label filter (values, ``kopf.PRESENT``, ``kopf.ABSENT``) as the API server's selector."""
    parts = []
    for key, value in labels.items():
        if value is kopf.PRESENT:
            parts.append(key)
        elif value is kopf.ABSENT:
            parts.append(f"!{key}")
        else:
            parts.append(f"{key}={value}")
    return ",".join(parts)


@dataclass(frozen=True)
class ChildWatch:
    """One kind of child, the label selector its watch sends, and what judges its events."""

    id: str
    kind: Kind
    selector: str
    handle: ChildEventHandler


@dataclass(frozen=True)
class _Ended:
    """What ended a stream: the resourceVersion to go on from, or None to start again from the current one."""

    version: str | None
    reason: str = ""


class _Stream:
    """One watch stream read by a thread; its events are queued for the event loop."""

    def __init__(self, kube: Kube, watch: ChildWatch, timeout_seconds: int) -> None:
        self._kube = kube
        self._watch = watch
        self._timeout = timeout_seconds
        self.stop = threading.Event()

    def read(self, version: str, deliver: Callable[[ChildEvent], None]) -> _Ended:
        """Read the stream from ``version`` until the server ends it, it fails, or :attr:`stop` is set."""
        watch = self._watch
        try:
            events = self._kube.watch(watch.kind, version, label_selector=watch.selector, timeout_seconds=self._timeout)
            for event in events:
                if self.stop.is_set():
                    return _Ended(None, "paused")
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    code = obj.get("code")
                    return _Ended(None, "gone" if code == 410 else "failed")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    deliver((kind, obj))
        except (ApiException, HTTPError, OSError, ValueError) as exc:
            log.warning("The watch of %s ended with an error; starting again: %s", watch.kind.plural, exc)
            return _Ended(None, "failed")
        return _Ended(version)


class ChildWatcher:
    """Runs every registered child watch until cancelled (see the module's docstring)."""

    def __init__(
        self,
        kube: Kube,
        watches: Sequence[ChildWatch],
        memo: kopf.Memo,
        pause: PeeringPause,
        *,
        kopf_context: Callable[[], contextvars.Context | None] = lambda: None,
        timeout_seconds: int = 270,
    ) -> None:
        self._kopf_context = kopf_context
        self._kube = kube
        self._watches = tuple(watches)
        self._memo = memo
        self._pause = pause
        self._timeout = timeout_seconds
        self._handling: set[asyncio.Task[None]] = set()
        self._streams: list[_Stream] = []

    async def run(self) -> None:
        """Watch every child kind at once, until cancelled."""
        try:
            await asyncio.gather(*(self._follow(watch) for watch in self._watches))
        finally:
            for stream in self._streams:
                stream.stop.set()

    async def _follow(self, watch: ChildWatch) -> None:
        stream = _Stream(self._kube, watch, self._timeout)
        self._streams.append(stream)
        logger = logging.getLogger(f"medcloud_operator.drift.{watch.kind.plural}")
        version: str | None = None
        failures = 0
        while True:
            await self._pause.wait_active()
            if version is None:
                try:
                    version = await asyncio.to_thread(self._kube.current_version, watch.kind, watch.selector)
                except (ApiException, HTTPError, OSError) as exc:
                    failures += 1
                    log.warning("Cannot list %s to start its watch: %s", watch.kind.plural, exc)
                    await asyncio.sleep(_backoff(failures))
                    continue
            ended = await self._read(stream, version, watch, logger)
            if ended.version is None:
                metrics.CHILD_WATCH_RESTARTS.labels(kind=watch.kind.kind, reason=ended.reason).inc()
                if ended.reason == "failed":
                    failures += 1
                    await asyncio.sleep(_backoff(failures))
            else:
                failures = 0
            version = ended.version

    async def _read(self, stream: _Stream, version: str, watch: ChildWatch, logger: logging.Logger) -> _Ended:
        """One stream, read by a daemon thread (a stream blocks until its next event; exiting must not wait)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[ChildEvent | _Ended] = asyncio.Queue()
        stream.stop.clear()

        def hand_over(item: ChildEvent | _Ended) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:
                stream.stop.set()  # the loop is closed: the operator is exiting

        def read() -> None:
            try:
                ended = stream.read(version, hand_over)
            except Exception:
                log.exception("The watch of %s failed", watch.kind.plural)
                ended = _Ended(None, "failed")
            hand_over(ended)

        threading.Thread(target=read, name=f"watch-{watch.kind.plural}", daemon=True).start()
        while True:
            item = await events.get()
            if isinstance(item, _Ended):
                return item
            if self._pause.paused:
                stream.stop.set()  # the stream ends at its next event; until then its events are dropped
                continue
            event_type, child = item
            metrics.CHILD_WATCH_EVENTS.labels(kind=watch.kind.kind).inc()
            self._spawn(watch.handle(event_type, child, self._memo, logger))

    def _spawn(self, handling: Awaitable[None]) -> None:
        """Run a handler beside the stream (it may wait in the work queue); keep it referenced until it ends."""

        async def guarded() -> None:
            try:
                await handling
            except (kopf.PermanentError, kopf.TemporaryError) as exc:
                # The owner's own status and Events hold the failure; its safety net retries it.
                log.info("Drift repair: %s", exc)
            except Exception:
                log.exception("Drift repair failed")

        # In a copy of a context Kopf's handlers run in: its settings and Event poster, which a repair's Events need.
        borrowed = self._kopf_context()
        loop = asyncio.get_running_loop()
        task = loop.create_task(guarded()) if borrowed is None else loop.create_task(guarded(), context=borrowed.copy())
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)


def _backoff(failures: int) -> float:
    return RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1]
