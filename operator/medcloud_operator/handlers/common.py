"""The reconcile frame every kind (Hospital, RecordStore, DeviceGateway, AppInstance, Consortium) runs in.

- Triggers (:func:`register_triggers`): created, changed or found at startup, and the safety net's sweep,
  all funnelled into the kind's one ``reconcile`` through the work queue (``medcloud_operator.workqueue``),
  changes first. An object found at startup or by the timer that is *settled* (Ready at its generation,
  with the digest of its spec and the settings in status) is not reconciled: the safety net costs no
  request, and each object is reconciled in full once per ``full_resync_seconds``, spread by its uid.
- The frame (:func:`reconcile_object`): under the object's lock and the duration metric, read the
  object (nothing to do when it is gone or being deleted), reconcile it, count the result in
  ``medcloud_reconcile_total``.
- Failures: classified into a :class:`ReconcileError` (a reason a person can act on, and a retry
  decision); :func:`raise_failure` reports it (an Event when new, a metric, a log line) and raises
  Kopf's permanent or temporary error.
- Drift: watch events on children (watched outside Kopf) reconcile their owner (:func:`register_drift_handlers`), and
  :func:`report_applied` posts one Event per child written.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn, cast

import kopf
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from medcloud.kube.client import Kind, Manifest
from medcloud.models import ConditionStatus, Phase, StatusBase
from medcloud.models.conditions import Reason
from medcloud_operator import background, childwatch, events, metrics, sharding
from medcloud_operator.apply import Action, Applied
from medcloud_operator.childwatch import ChildWatch
from medcloud_operator.context import OperatorContext, get_context
from medcloud_operator.safetynet import SweptKind, record_key
from medcloud_operator.status import RECONCILING_DIGEST, STATUS_PRECONDITION, Check, StaleBodyError
from medcloud_operator.workqueue import Priority

Logger = logging.Logger | logging.LoggerAdapter[Any]


class ReconcileError(Exception):
    """A classified reconcile failure: why, and whether it will heal."""

    def __init__(self, reason: str, message: str, *, permanent: bool = False, delay: float = 10.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.permanent = permanent
        self.delay = delay

    @property
    def check(self) -> Check:
        """The failure as the condition of the part it broke shows it."""
        return Check(ConditionStatus.FALSE, self.reason, self.message)

    def to_kopf(self) -> kopf.PermanentError | kopf.TemporaryError:
        """The Kopf error that retries it (after ``delay``) or gives up on it."""
        if self.permanent:
            return kopf.PermanentError(self.message)
        return kopf.TemporaryError(self.message, delay=self.delay)


def api_message(exc: ApiException) -> str:
    """The API server's own words (the ``message`` of its Status), else the HTTP reason."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def retry_on_conflict(exc: ApiException, what: str) -> None:
    """Someone changed ``what`` between our read and our write: raise a retry that reads again soon."""
    if exc.status == 409:
        raise kopf.TemporaryError(f"conflict writing {what}: {api_message(exc)}", delay=1) from exc


def classify_request(exc: Exception) -> ReconcileError | None:
    """A failed request to the API server, as every kind that writes children sees it; None for anything else."""
    if isinstance(exc, ApiException):
        message = api_message(exc)
        if exc.status == 403:
            return ReconcileError(
                Reason.FORBIDDEN, f"The operator is not allowed to do this (fix its RBAC): {message}", delay=60
            )
        if exc.status in (400, 422):
            return ReconcileError(
                Reason.INVALID_SPEC, f"The API server rejected a child object: {message}", permanent=True
            )
        return ReconcileError(Reason.APPLY_FAILED, f"The API server failed a request ({exc.status}): {message}")
    if isinstance(exc, HTTPError | OSError):
        return ReconcileError(Reason.APPLY_FAILED, f"The API server is unreachable: {exc}")
    return None


def lock_key(kind: Kind, name: str, namespace: str | None = None) -> str:
    return f"{kind.kind}/{namespace}/{name}" if namespace else f"{kind.kind}/{name}"


@contextmanager
def handling(ctx: OperatorContext, kind: Kind, name: str, namespace: str | None = None) -> Iterator[None]:
    """Hold the object's lock (its other triggers wait) and time the block (``medcloud_reconcile_duration_seconds``)."""
    with ctx.locks(lock_key(kind, name, namespace)), metrics.reconcile_timer(kind.kind):
        yield


def reconcile_object(
    ctx: OperatorContext,
    kind: Kind,
    name: str,
    namespace: str | None,
    reconcile: Callable[[Manifest], None],
    seen: Mapping[str, Any] | None = None,
) -> None:
    """Read the object and ``reconcile`` it unless it is gone or being deleted; count the result.

    ``seen`` is the body the watch event that caused this reconcile carried (Kopf's create, update and
    resume handlers have one): it is reconciled without a fresh GET, and the status write is
    conditional on its resourceVersion. If the object moved on in the meantime (a 409), it is read
    and reconciled again at once; the children the first pass applied from the older spec are then
    brought to the newer one.
    """
    with handling(ctx, kind, name, namespace):
        if seen is not None:
            try:
                _reconcile_body(ctx, kind, plain(seen), reconcile, precondition=True)
                return
            except StaleBodyError:
                metrics.STALE_BODIES.labels(kind=kind.kind).inc()
        body = ctx.kube.get(kind, name, namespace)
        if body is not None:
            _reconcile_body(ctx, kind, body, reconcile, precondition=False)


def plain(body: Mapping[str, Any]) -> Manifest:
    """A plain, detached copy of a body Kopf handed over (its nested mappings are views)."""
    return cast(Manifest, json.loads(json.dumps(body, default=dict)))


def _reconcile_body(
    ctx: OperatorContext, kind: Kind, body: Manifest, reconcile: Callable[[Manifest], None], *, precondition: bool
) -> None:
    if body["metadata"].get("deletionTimestamp"):
        return
    if not sharding.matches(ctx.settings.shard_selector, body["metadata"].get("labels")):
        return  # another shard's (a child's or a member's event led here): its replica acts on it
    token = RECONCILING_DIGEST.set(desired_digest(body, ctx.settings_fingerprint))
    condition = STATUS_PRECONDITION.set(body["metadata"].get("resourceVersion") if precondition else None)
    try:
        reconcile(body)
    except StaleBodyError:
        raise
    except kopf.TemporaryError:
        metrics.RECONCILE_TOTAL.labels(kind=kind.kind, result=metrics.RESULT_REQUEUE).inc()
        raise
    except Exception:
        metrics.RECONCILE_TOTAL.labels(kind=kind.kind, result=metrics.RESULT_ERROR).inc()
        raise
    finally:
        STATUS_PRECONDITION.reset(condition)
        RECONCILING_DIGEST.reset(token)
    metrics.RECONCILE_TOTAL.labels(kind=kind.kind, result=metrics.RESULT_SUCCESS).inc()


def desired_digest(body: Mapping[str, Any], settings_fingerprint: str) -> str:
    """What the object's children are built from: its spec and the settings that shape them (hex SHA-256)."""
    spec = json.dumps(body.get("spec") or {}, sort_keys=True, default=dict)  # Kopf hands nested views
    return hashlib.sha256(f"{settings_fingerprint}\n{spec}".encode()).hexdigest()


def is_settled(body: Mapping[str, Any], settings_fingerprint: str) -> bool:
    """Ready at its current generation, and last reconciled from this very spec and these settings.

    Read from the body alone (no request): the safety net's and the resume's cheap test.
    """
    status = body.get("status") or {}
    return (
        status.get("phase") == Phase.READY.value
        and status.get("observedGeneration") == body.get("metadata", {}).get("generation")
        and status.get("observedDigest") == desired_digest(body, settings_fingerprint)
    )


def last_write_was_status(body: Mapping[str, Any], own_manager: str) -> bool:
    """Whether the object's newest write (by its managedFields' times) went to its status subresource alone.

    A controller keeping a status current (the quota controller's usage) writes there; a person or a
    tool editing the object writes the object, under a field manager of its own. The fields keep whole
    seconds, so the operator's own write (``own_manager``) may tie with the status write that followed
    it: a tie of the two counts as a status write (an edit by anyone else ties or wins with its own).
    """
    entries = (body.get("metadata") or {}).get("managedFields") or []
    if not entries:
        return False
    newest = max(str(entry.get("time") or "") for entry in entries)
    latest = [entry for entry in entries if str(entry.get("time") or "") == newest]
    return any(entry.get("subresource") == "status" for entry in latest) and all(
        entry.get("subresource") == "status" or entry.get("manager") == own_manager for entry in latest
    )


def full_resync_due(uid: str, now: float, interval: float, period: float) -> bool:
    """Whether this tick of the safety net is the object's one full reconcile of the ``period``.

    The period is cut into ticks of ``interval``; each object owns one of them, chosen by its uid,
    so full reconciles are spread evenly instead of all coming at once.
    """
    ticks = max(1, round(period / interval))
    slot = int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16) % ticks
    return int(now // interval) % ticks == slot


def object_key(kwargs: Mapping[str, Any]) -> str | None:
    """The work queue's key of the object a Kopf handler was called for (its namespace and name)."""
    name = kwargs.get("name")
    return None if name is None else record_key(kwargs.get("namespace"), name)


def queued(controller: str, priority: Priority, handler: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """``handler`` (synchronous) as a Kopf handler that waits its turn in the work queue at ``priority``."""

    async def run_queued(memo: kopf.Memo, **kwargs: Any) -> Any:
        work = functools.partial(handler, memo=memo, **kwargs)
        return await get_context(memo).queue.run(controller, priority, work, key=object_key(kwargs))

    return run_queued


def register_triggers(
    registry: kopf.OperatorRegistry,
    kind: Kind,
    *,
    changed: Callable[..., None],
    resync: Callable[..., None],
    interval: float,
    prefix: str | None = None,
    resync_id: str | None = None,
    safety_net: bool = True,
) -> None:
    """A kind's own triggers: create, update and resume call ``changed``; the safety net ``resync`` every ``interval``.

    Create and update are Kopf's handlers; the resume is the kind's Kopf event handler seeing the
    listing (type None), which also keeps the safety net's records: one handler per object at a
    restart instead of two, and none of Kopf's per-handler bookkeeping for the settled majority (a
    resume that fails for now is retried by the safety net after the error's delay).
    All of them wait in the work queue: create and update as changes, resume after them, the safety
    net last (:mod:`medcloud_operator.safetynet`: one sweep of the kind per interval). With
    ``safety_net`` the resume and the sweep skip a settled object (:func:`is_settled`) except on its
    one full reconcile per ``full_resync_seconds``; without it (a resync that does work of its own,
    like a RecordStore's usage count) the sweep resyncs every object.

    What else the kind's watch events feed is added with :func:`on_watch_event`: called from the same
    Kopf event handler, one Kopf handler invocation per event.

    Handler ids (``<prefix>_changed``, ``<prefix>_resync``) name the handlers in Kopf's logs and in
    its progress annotations, so they stay as they are once released; ``<prefix>_resync`` now keeps
    the safety net's records.
    """
    group, version = kind.api_version.split("/")
    prefix = prefix or kind.kind.lower()
    controller = kind.kind.lower()
    on_change = queued(controller, Priority.CHANGE, changed)
    for cause in (kopf.on.update, kopf.on.create):
        cause(group, version, kind.plural, id=f"{prefix}_changed", registry=registry)(on_change)

    # The safety net: one sweep of the kind per interval, over records kept from this watch (no timer per object).
    work = background.of(registry)
    net = work.safety_net
    net.add(SweptKind(kind, resync, interval, safety_net))

    async def resume(body: kopf.Body, memo: kopf.Memo, kwargs: dict[str, Any]) -> None:
        ctx = get_context(memo)
        key = object_key(kwargs)
        job = functools.partial(changed, body=body, memo=memo, retry=0, **kwargs)
        try:
            await ctx.queue.run(controller, Priority.RESUME, job, key=key)
        except kopf.PermanentError as exc:
            kwargs["logger"].info("%s: %s", kind.kind, exc)  # its status says so; the safety net tries again
        except kopf.TemporaryError as exc:
            if key is not None:
                net.retry_later(kind.kind, key, exc.delay or 1.0, memo, ctx.queue)
        except Exception:
            # Not a failure the reconcile could classify (Kopf retried those after a minute): the same here.
            kwargs["logger"].exception("%s: the resume's reconcile failed", kind.kind)
            if key is not None:
                net.retry_later(kind.kind, key, UNEXPECTED_RETRY_SECONDS, memo, ctx.queue)

    async def on_seen(type: str | None, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        if work.kopf_context is None:
            work.kopf_context = contextvars.copy_context()
        settled = is_settled(body, get_context(memo).settings_fingerprint)
        net.observe(kind.kind, type, body, settled)
        for hook in work.watch_hooks.get(kind.kind, ()):
            await hook(type=type, body=body, memo=memo, **kwargs)
        if type is not None:
            return
        # Kopf's listing (at start, and when a watch must list anew) is the resume, in this one handler
        # rather than Kopf's resume handlers, whose bookkeeping per object cost more than the check.
        if settled:
            # Nothing changed while no operator looked; the safety net's full reconcile comes in time.
            metrics.SETTLED_SKIPS.labels(kind=kind.kind, trigger="resume").inc()
            return
        await resume(body, memo, kwargs)

    kopf.on.event(group, version, kind.plural, id=resync_id or f"{prefix}_resync", registry=registry)(on_seen)


def on_watch_event(registry: kopf.OperatorRegistry, kind: Kind, hook: Callable[..., Awaitable[None]]) -> None:
    """Have ``hook`` called with every watch event of ``kind`` (as a Kopf event handler: ``type``, ``body``,
    ``memo``, ``logger``, Kopf's indexes...), from the kind's one event handler (:func:`register_triggers`).

    Kopf's own bookkeeping per handler and event is what a restart at 5,000 Hospitals spends most on:
    an index fed this way costs no Kopf handler of its own.
    """
    background.of(registry).watch_hooks.setdefault(kind.kind, []).append(hook)


def raise_failure(body: Manifest, failure: ReconcileError, status_written: bool, logger: Logger) -> NoReturn:
    """An Event when the failure is new (the status changed), a metric, a log line, then the Kopf error."""
    meta = body["metadata"]
    where = f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]
    if status_written:
        events.post(body, events.WARNING, failure.reason, failure.message)
    metrics.RECONCILE_ERRORS.labels(kind=body["kind"], reason=failure.reason).inc()
    logger.warning("%s %s: %s: %s", body["kind"], where, failure.reason, failure.message)
    raise failure.to_kopf() from failure


def announce(body: Manifest, reason: str, message: str, logger: Logger, *, warning: bool = False) -> None:
    """One Event on ``body`` and one log line, saying the same thing."""
    events.post(body, events.WARNING if warning else events.NORMAL, reason, message)
    if warning:
        logger.warning("%s", message)
    else:
        logger.info("%s", message)


def is_steady(previous: StatusBase, generation: int | None) -> bool:
    """The object was Ready (or Degraded) at this generation: a write now repairs drift, not a spec change."""
    return previous.phase in (Phase.READY, Phase.DEGRADED) and previous.observed_generation == generation


def report_applied(
    body: Manifest,
    previous: StatusBase,
    generation: int | None,
    results: list[Applied],
    logger: Logger,
    *,
    defer: bool = False,
) -> list[tuple[str, str]]:
    """A log line per child that changed; Events: one per drift repair, one per action the spec caused.

    A change while the spec stood still is drift being repaired, worth an Event of its own. What a new
    or changed spec caused is one Event per action (``Created``: the dozen objects of a new tenancy),
    so onboarding a Hospital posts one Event, not one per child. With ``defer`` those (reason, message)
    pairs are returned instead of posted, for the caller to fold into an Event of its own
    (:func:`post_caused`).
    """
    steady = is_steady(previous, generation)
    caused: dict[Action, list[str]] = {}
    for result in results:
        if not result.changed:
            continue
        if steady and result.action is not Action.DELETED:
            metrics.DRIFT_REPAIRS.labels(kind=result.kind).inc()
            what = f"{result.describe()}: it had been changed or deleted outside the operator"
            announce(body, "DriftRepaired", what, logger)
        else:
            caused.setdefault(result.action, []).append(f"{result.kind} {result.name}")
            logger.info("%s", result.describe())
    summaries = [
        (action.value.capitalize(), f"{action.value.capitalize()} {len(objects)}: {', '.join(objects)}")
        for action, objects in caused.items()
    ]
    if not defer:
        post_caused(body, summaries)
    return summaries


def post_caused(body: Manifest, summaries: list[tuple[str, str]], *, into: tuple[str, str] | None = None) -> None:
    """Post what :func:`report_applied` deferred: an Event each, or, ``into`` an Event (reason, message), one Event.

    A Hospital's onboarding says in its one Ready Event what it created, rather than in an Event of its own.
    """
    if into is None:
        for reason, message in summaries:
            events.post(body, events.NORMAL, reason, message[:EVENT_MESSAGE_LIMIT])
        return
    reason, message = into
    folded = " ".join([message, *(f"{summary}." for _, summary in summaries)])
    events.post(body, events.NORMAL, reason, folded[:EVENT_MESSAGE_LIMIT])


EVENT_MESSAGE_LIMIT = 1024
"""Longer Event messages are cut: the API server refuses messages over 1 KiB in events.k8s.io/v1."""


Repair = Callable[[OperatorContext, kopf.Memo, str, str | None, Logger], None]
"""Reconcile an owner: the context, Kopf's memo, the owner's name, the child's namespace, the logger."""
Refresh = Callable[[OperatorContext, str, Manifest, Logger], None]
"""Bring an owner's status up to a refresh kind's child (the owner's name, the child as the watch shows it)."""

UNEXPECTED_RETRY_SECONDS = 60.0
"""When an object's resume fails with an error no reconcile classified, its retry comes this much later."""

ECHO_WAIT_SECONDS = 10.0
"""How long a worker waits for the operator's own write of a child to finish before it judges that child's event."""


def register_drift_handlers(
    registry: kopf.OperatorRegistry,
    child_kinds: Iterable[Kind],
    *,
    id_prefix: str,
    labels: Mapping[str, Any],
    owner_kind: str,
    owner_of: Callable[[Manifest], str | None],
    reconcile: Repair,
    refresh_kinds: Iterable[Kind] = (),
    refresh: Refresh | None = None,
) -> None:
    """Watch children (by ``labels``): one changed or deleted by someone else reconciles its owner (queued as a change).

    The watches run outside Kopf (:mod:`medcloud_operator.childwatch`: from the current resourceVersion,
    selected on the server by ``labels``, nothing kept per child).

    ``owner_of`` names the owner of a child (None: not one of ours);
    ``reconcile`` is called with the context, Kopf's memo, that name, the
    child's namespace and the logger. A change that is the echo of the
    operator's own write (the resourceVersion it wrote) reconciles nothing,
    even when the echo overtakes the write's response: its worker first waits
    for a write of that child still in flight (:meth:`OwnWrites.is_own`).
    Events of ``refresh_kinds`` (children whose status a controller keeps moving, like a
    ResourceQuota's usage) are queued as refreshes, behind changes and resumes, and call
    ``refresh`` (when given) instead of a whole reconcile: a province's onboarding is not
    slowed by the quota controller's status updates of its new quotas.
    """
    refreshing = {kind.kind for kind in refresh_kinds}

    async def child_changed(type: str, body: Manifest, memo: kopf.Memo, logger: logging.Logger) -> None:
        meta = body["metadata"]
        owner = owner_of(body)
        if owner is None:
            return
        ctx = get_context(memo)
        kind, namespace, name, version = body["kind"], meta.get("namespace"), meta["name"], meta.get("resourceVersion")
        may_be_echo = type != "DELETED"
        if may_be_echo and ctx.own_writes.is_own(kind, namespace, name, version):
            return

        def repair() -> None:
            if may_be_echo and ctx.own_writes.is_own(kind, namespace, name, version, wait=ECHO_WAIT_SECONDS):
                metrics.ECHO_SKIPS.labels(kind=kind).inc()
                return
            if kind in refreshing and refresh is not None and type != "DELETED":
                refresh(ctx, owner, body, logger)
            else:
                reconcile(ctx, memo, owner, namespace, logger)

        logger.debug("%s %s %s: reconciling %s %s", kind, name, type.lower(), owner_kind, owner)
        priority = Priority.REFRESH if kind in refreshing else Priority.CHANGE
        await ctx.queue.run(owner_kind.lower(), priority, repair)

    watches = background.of(registry).child_watches
    for kind in child_kinds:
        watches.append(ChildWatch(f"{id_prefix}-{kind.plural}", kind, childwatch.label_selector(labels), child_changed))
