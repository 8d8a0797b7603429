"""The reconcile frame every kind (Hospital, RecordStore, DeviceGateway, AppInstance, Consortium) runs in.

- Triggers (:func:`register_triggers`): created, changed or found at startup, and a resync timer,
  all funnelled into the kind's one ``reconcile``.
- The frame (:func:`reconcile_object`): under the object's lock and the duration metric, read the
  object (nothing to do when it is gone or being deleted), reconcile it, count the result in
  ``medcloud_reconcile_total``.
- Failures: classified into a :class:`ReconcileError` (a reason a person can act on, and a retry
  decision); :func:`raise_failure` reports it (an Event when new, a metric, a log line) and raises
  Kopf's permanent or temporary error.
- Drift: watch events on children reconcile their owner (:func:`register_drift_handlers`), and
  :func:`report_applied` posts one Event per child written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

import kopf
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from medcloud.kube.client import Kind, Manifest
from medcloud.models import ConditionStatus, Phase, StatusBase
from medcloud.models.conditions import Reason
from medcloud_operator import events, metrics
from medcloud_operator.apply import Action, Applied
from medcloud_operator.context import OperatorContext, get_context
from medcloud_operator.status import Check

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
) -> None:
    """Read the object and ``reconcile`` it unless it is gone or being deleted; count the result."""
    with handling(ctx, kind, name, namespace):
        body = ctx.kube.get(kind, name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        try:
            reconcile(body)
        except kopf.TemporaryError:
            metrics.RECONCILE_TOTAL.labels(kind=kind.kind, result=metrics.RESULT_REQUEUE).inc()
            raise
        except Exception:
            metrics.RECONCILE_TOTAL.labels(kind=kind.kind, result=metrics.RESULT_ERROR).inc()
            raise
        metrics.RECONCILE_TOTAL.labels(kind=kind.kind, result=metrics.RESULT_SUCCESS).inc()


def register_triggers(
    registry: kopf.OperatorRegistry,
    kind: Kind,
    *,
    changed: Callable[..., None],
    resync: Callable[..., None],
    interval: float,
    prefix: str | None = None,
    resync_id: str | None = None,
) -> None:
    """A kind's own triggers: create, update and resume call ``changed``; a timer every ``interval`` ``resync``.

    Handler ids (``<prefix>_changed``, ``<prefix>_resync``) name the handlers in Kopf's logs and in
    its progress annotations, so they stay as they are once released.
    """
    group, version = kind.api_version.split("/")
    prefix = prefix or kind.kind.lower()
    for cause in (kopf.on.update, kopf.on.create, kopf.on.resume):
        cause(group, version, kind.plural, id=f"{prefix}_changed", registry=registry)(changed)
    kopf.timer(
        group,
        version,
        kind.plural,
        id=resync_id or f"{prefix}_resync",
        interval=interval,
        initial_delay=interval,
        registry=registry,
    )(resync)


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
    body: Manifest, previous: StatusBase, generation: int | None, results: list[Applied], logger: Logger
) -> None:
    """One Event and log line per child that changed. A change while the spec stood still is drift being repaired."""
    steady = is_steady(previous, generation)
    for result in results:
        if not result.changed:
            continue
        if steady and result.action is not Action.DELETED:
            metrics.DRIFT_REPAIRS.labels(kind=result.kind).inc()
            reason, what = "DriftRepaired", f"{result.describe()}: it had been changed or deleted outside the operator"
        else:
            reason, what = result.action.value.capitalize(), result.describe()
        announce(body, reason, what, logger)


def register_drift_handlers(
    registry: kopf.OperatorRegistry,
    child_kinds: Iterable[Kind],
    *,
    id_prefix: str,
    labels: Mapping[str, Any],
    owner_kind: str,
    owner_of: Callable[[kopf.Body], str | None],
    reconcile: Callable[[OperatorContext, kopf.Memo, str, str | None, Logger], None],
) -> None:
    """Watch children (by ``labels``): one changed or deleted by someone else reconciles its owner.

    ``owner_of`` names the owner of a child (None: not one of ours);
    ``reconcile`` is called with the context, Kopf's memo, that name, the
    child's namespace and the logger. A change that is the echo of the
    operator's own write (the resourceVersion it wrote) reconciles nothing.
    """

    def child_changed(
        type: str | None,  # Kopf passes the watch event type by this name
        body: kopf.Body,
        memo: kopf.Memo,
        logger: kopf.Logger,
        **_: Any,
    ) -> None:
        if type is None:
            # The initial listing at startup: the resume handlers reconcile every owner anyway.
            return
        meta = body["metadata"]
        owner = owner_of(body)
        if owner is None:
            return
        ctx = get_context(memo)
        namespace = meta.get("namespace")
        if type != "DELETED" and ctx.own_writes.is_own(
            body["kind"], namespace, meta["name"], meta.get("resourceVersion")
        ):
            return
        logger.debug("%s %s %s: reconciling %s %s", body["kind"], meta["name"], type.lower(), owner_kind, owner)
        reconcile(ctx, memo, owner, namespace, logger)

    for kind in child_kinds:
        kopf.on.event(
            kind.api_version, kind.plural, id=f"{id_prefix}-{kind.plural}", labels=dict(labels), registry=registry
        )(child_changed)
