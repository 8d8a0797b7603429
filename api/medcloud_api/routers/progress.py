"""Onboarding progress as Server-Sent Events, fed by Kubernetes watches.

One thread per kind (the Hospital, and the stores, gateways and apps in its
namespace) lists, then watches, and hands events to the stream through an
asyncio queue; the kubernetes client is blocking, and four watches must run
at once. The stream sends ``layer`` events when a component's readiness
changes, ``readiness`` events when the overall readiness changes, and ends
with one ``done`` event: Ready, Failed, Deleted, Timeout or Error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel

from medcloud.models import AppInstance, DeviceGateway, Hospital, RecordStore, Resource, hospital_namespace
from medcloud_api import problems
from medcloud_api.deps import Authz, KubeDep, SettingsDep, current_user
from medcloud_api.kube import Kube
from medcloud_api.problems import not_found
from medcloud_api.readiness import ProgressTracker
from medcloud_api.routers.hospitals import HospitalNameParam

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/hospitals", tags=["progress"], dependencies=[Depends(current_user)])

KINDS: tuple[type[Resource], ...] = (Hospital, RecordStore, DeviceGateway, AppInstance)

# The server ends each watch request after this long, so a watcher notices a
# closed stream (its stop flag) within it.
WATCH_SLICE_SECONDS = 5

Push = Callable[[tuple[str, str, Any]], None]


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


EXAMPLE_STREAM = (
    "id: 1\nevent: layer\n"
    'data: {"layer":"stores","kind":"RecordStore","name":"emr","state":"Provisioning","ready":false}\n\n'
    "id: 2\nevent: readiness\n"
    'data: {"state":"Provisioning","ready":false,"summary":"1 of 6 ready; ...","readyCount":1,"total":6}\n\n'
    'id: 9\nevent: done\ndata: {"result":"Ready","detail":"all 6 components are ready"}\n\n'
)


EVENT_SCHEMA: dict[str, Any] = {
    "description": (
        "One event of the stream (the schema describes each event, as OpenAPI 3.2's itemSchema does). "
        "data is JSON: a component for layer, an overall readiness for readiness, and "
        "{result, detail} for done, where result is Ready, Failed, Deleted, Timeout or Error."
    ),
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["layer", "readiness", "done"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
    },
}


def _sse(seq: int, event: str, data: BaseModel | dict[str, Any]) -> str:
    payload = data.model_dump(mode="json", by_alias=True, exclude_none=True) if isinstance(data, BaseModel) else data
    return f"id: {seq}\nevent: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _watch_kind(
    kube: Kube, kind: type[Resource], name: str, push: Push, stop: threading.Event, deadline: float
) -> None:
    """List, then watch, one kind until stopped or past the deadline; relist when the watch expires (410)."""
    kind_name = kind.__name__
    namespace = hospital_namespace(name) if kind.crd.namespaced else None
    selector = None if kind.crd.namespaced else f"metadata.name={name}"
    try:
        while not stop.is_set():
            items, _, resource_version = kube.list_page(kind, namespace, field_selector=selector)
            push((kind_name, "SYNC", items))
            expired = False
            while not stop.is_set() and not expired:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                slice_seconds = max(1, min(WATCH_SLICE_SECONDS, int(remaining) + 1))
                try:
                    for event in kube.watch(kind, namespace, resource_version, slice_seconds, selector):
                        obj = event["object"]
                        resource_version = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            push((kind_name, str(event["type"]), obj))
                        if stop.is_set():
                            return
                except ApiException as exc:
                    if exc.status != 410:
                        raise
                    expired = True
    except Exception as exc:
        if not stop.is_set():
            log.warning("progress watch of %s for %s failed: %s", kind_name, name, exc)
            push((kind_name, "ERROR", f"watching {kind_name} failed"))


async def progress_events(kube: Kube, name: str, timeout: float, heartbeat: float) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue()
    stop = threading.Event()
    deadline = time.monotonic() + timeout

    def push(item: tuple[str, str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody listens any more
            stop.set()

    threads = [
        threading.Thread(
            target=_watch_kind,
            args=(kube, kind, name, push, stop, deadline),
            name=f"progress-{kind.__name__}",
            daemon=True,
        )
        for kind in KINDS
    ]
    for thread in threads:
        thread.start()
    tracker = ProgressTracker(kind.__name__ for kind in KINDS)
    seq = 0

    def sse(event: str, data: BaseModel | dict[str, Any]) -> str:
        nonlocal seq
        seq += 1
        return _sse(seq, event, data)

    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                summary = tracker.last.summary if tracker.last else "no status yet"
                yield sse("done", {"result": "Timeout", "detail": f"not ready after {timeout:.0f}s: {summary}"})
                return
            try:
                kind, event_type, payload = await asyncio.wait_for(queue.get(), timeout=min(remaining, heartbeat))
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if event_type == "ERROR":
                yield sse("done", {"result": "Error", "detail": str(payload)})
                return
            sync = event_type == "SYNC"
            changes = tracker.sync(kind, payload) if sync else tracker.event(kind, event_type, payload)
            for view in changes:
                yield sse("layer", view.model_dump(mode="json", by_alias=True, exclude={"spec", "conditions"}))
            readiness = tracker.readiness()
            if readiness is not None:
                yield sse("readiness", readiness)
            if not tracker.synced:
                continue
            if not tracker.has_tenant():
                yield sse("done", {"result": "Deleted", "detail": f"hospital {name} was deleted"})
                return
            current = tracker.last
            if current is not None and current.state in ("Ready", "Failed"):
                yield sse(
                    "done",
                    {
                        "result": current.state,
                        "detail": current.summary,
                        "readiness": current.model_dump(mode="json", by_alias=True),
                    },
                )
                return
    finally:
        stop.set()


@router.get(
    "/{name}/events",
    response_class=EventStream,
    summary="Stream onboarding progress",
    responses={
        200: {
            "description": "A text/event-stream of layer, readiness and done events",
            "content": {"text/event-stream": {"schema": EVENT_SCHEMA, "example": EXAMPLE_STREAM}},
        },
        **problems.responses(401, 403, 404, 422),
    },
)
def hospital_events(
    name: HospitalNameParam,
    kube: KubeDep,
    authz: Authz,
    settings: SettingsDep,
    timeout: Annotated[
        float | None, Query(gt=0, le=86400, description="Seconds until the stream gives up (capped by the server).")
    ] = None,
) -> EventStream:
    """Each layer's readiness as it changes, until the hospital is Ready, Failed or deleted, or the timeout.

    The first events describe every component as it stands, so a client that
    connects late (or reconnects) misses nothing.
    """
    namespace = hospital_namespace(name)
    authz.authorize("get", "hospitals", name=name)
    authz.authorize("watch", "hospitals", name=name)
    for kind in KINDS[1:]:
        authz.authorize("list", kind.crd.plural, namespace=namespace)
        authz.authorize("watch", kind.crd.plural, namespace=namespace)
    if kube.get(Hospital, name) is None:
        raise not_found(f"hospital {name}")
    seconds = min(timeout or settings.events_timeout_seconds, settings.events_max_timeout_seconds)
    return EventStream(
        progress_events(kube, name, seconds, settings.events_heartbeat_seconds),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
