"""Prometheus metrics, in controller-runtime's naming style; each is documented in docs/metrics.md.

The series live in the process-wide default registry and are served on their
own port (``MEDCLOUD_METRICS_PORT``), apart from the liveness endpoint, so a
scrape never competes with a probe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from medcloud.models import DeviceCAStatus, Phase

RECONCILE_TOTAL = Counter(
    "medcloud_reconcile_total",
    "Reconciliations by kind and result (success, error, requeue).",
    ["kind", "result"],
)
RECONCILE_ERRORS = Counter(
    "medcloud_reconcile_errors_total",
    "Failed reconciliations by kind and reason (the condition reason the failure set).",
    ["kind", "reason"],
)
RECONCILE_DURATION = Histogram(
    "medcloud_reconcile_duration_seconds",
    "Time one reconciliation took, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
API_WRITES = Counter(
    "medcloud_api_writes_total",
    "Write requests the operator sent to the API server, by object kind and verb (create, update, patch, delete).",
    ["kind", "verb"],
)
CHILD_WATCH_EVENTS = Counter(
    "medcloud_child_watch_events_total",
    "Watch events of child objects (received outside Kopf, from the current resourceVersion), by child kind.",
    ["kind"],
)
CHILD_WATCH_RESTARTS = Counter(
    "medcloud_child_watch_restarts_total",
    "Child watches started again from the current resourceVersion, by kind and why (gone: 410, failed: an error).",
    ["kind", "reason"],
)
BROKER_GRANT_WITHDRAWALS = Counter(
    "medcloud_broker_grant_withdrawals_total",
    "Deleted MQTT gateways' broker grants: withdrawn after a deletion, outlived (found at a check), "
    "failed (the API refused; tried again).",
    ["result"],
)
SAFETY_NET_SWEEPS = Counter(
    "medcloud_safety_net_sweeps_total",
    "Ticks of the safety net's sweep over the objects of a kind (one per resync interval while not paused).",
    ["kind"],
)
PEERING_PAUSED = Gauge(
    "medcloud_peering_paused",
    "1 while Kopf's peering pauses this replica (a peer of higher priority is alive), which the child watches "
    "and the safety net follow; 0 while it acts.",
)
DRIFT_REPAIRS = Counter(
    "medcloud_drift_repairs_total",
    "Child objects found changed or deleted by someone else and put back, by kind.",
    ["kind"],
)
STALE_BODIES = Counter(
    "medcloud_stale_bodies_total",
    "Reconciles started from the body of the watch event that caused them whose status write found the object "
    "changed since (409): it was read again and reconciled at once.",
    ["kind"],
)
SETTLED_SKIPS = Counter(
    "medcloud_settled_skips_total",
    "Objects found settled (Ready at their generation, from this spec and these settings) and so not reconciled, "
    "by kind and trigger (resume, resync).",
    ["kind", "trigger"],
)
ECHO_SKIPS = Counter(
    "medcloud_echo_skips_total",
    "Child watch events found, once the operator's write of that child finished, to be the echo of that write "
    "(the event overtook the write's response), and so not reconciled; by child kind.",
    ["kind"],
)
RESOURCES = Gauge(
    "medcloud_resources",
    "MedCloud resources this operator replica knows, by kind and phase.",
    ["kind", "phase"],
)
DEVICES = Gauge(
    "medcloud_devices",
    "Devices of each DeviceGateway by state: pending, enrolled, revoked (from its Device objects) and active "
    "(enrolled devices a replica of the gateway saw within its grace period).",
    ["namespace", "gateway", "state"],
)

DEVICE_CA_EXPIRY = Gauge(
    "medcloud_device_ca_expiry_timestamp_seconds",
    "When each hospital's device CA ends (Unix time): ca=current its certificate's expiry, ca=previous when the CA a "
    "rotation replaced is dropped from trust at the latest (absent when there is none).",
    ["hospital", "ca"],
)


def set_device_ca_expiry(hospital: str, status: DeviceCAStatus | None) -> None:
    """The hospital's device CA series from its ``status.deviceCa`` (none while it has no CA)."""
    ends: dict[str, datetime | None] = {"current": None, "previous": None}
    if status is not None:
        ends["current"] = status.current.not_after
        ends["previous"] = status.previous.trusted_until if status.previous is not None else None
    for ca, end in ends.items():
        if end is not None:
            DEVICE_CA_EXPIRY.labels(hospital=hospital, ca=ca).set(end.timestamp())
        else:
            with suppress(KeyError):
                DEVICE_CA_EXPIRY.remove(hospital, ca)


RESULT_SUCCESS = "success"
RESULT_ERROR = "error"
RESULT_REQUEUE = "requeue"
RESULT_REQUEUE_AFTER = "requeue_after"

# controller-runtime's own names and labels (``controller`` is the kind in lower case, as kubebuilder names
# controllers; ``name`` is the work queue's, the same), so its dashboards and alerts work unchanged.
# Counted by the work queue (medcloud_operator.workqueue), which every reconcile passes through.
CONTROLLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUE_BUCKETS = (1e-05, 1e-04, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
CR_RECONCILE_TOTAL = Counter(
    "controller_runtime_reconcile_total",
    "Total number of reconciliations per controller (result: success, error, requeue_after).",
    ["controller", "result"],
)
CR_RECONCILE_ERRORS = Counter(
    "controller_runtime_reconcile_errors_total", "Total number of reconciliation errors per controller.", ["controller"]
)
CR_RECONCILE_TIME = Histogram(
    "controller_runtime_reconcile_time_seconds",
    "Length of time per reconciliation per controller.",
    ["controller"],
    buckets=CONTROLLER_BUCKETS,
)
ACTIVE_WORKERS = Gauge(
    "controller_runtime_active_workers", "Number of currently used workers per controller.", ["controller"]
)
MAX_CONCURRENT_RECONCILES = Gauge(
    "controller_runtime_max_concurrent_reconciles",
    "Maximum number of concurrent reconciles per controller.",
    ["controller"],
)
WORKQUEUE_DEPTH = Gauge("workqueue_depth", "Current depth of workqueue.", ["name"])
WORKQUEUE_ADDS = Counter("workqueue_adds_total", "Total number of adds handled by workqueue.", ["name"])
WORKQUEUE_RETRIES = Counter("workqueue_retries_total", "Total number of retries handled by workqueue.", ["name"])
WORKQUEUE_QUEUE_DURATION = Histogram(
    "workqueue_queue_duration_seconds",
    "How long in seconds an item stays in workqueue before being requested.",
    ["name"],
    buckets=QUEUE_BUCKETS,
)
WORKQUEUE_WORK_DURATION = Histogram(
    "workqueue_work_duration_seconds",
    "How long in seconds processing an item from workqueue takes.",
    ["name"],
    buckets=QUEUE_BUCKETS,
)


class PhaseTracker:
    """Last known phase per object, exported as ``medcloud_resources{kind,phase}`` (zeros included)."""

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._phases: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def set(self, kind: str, name: str, phase: Phase) -> None:
        with self._lock:
            self._phases.setdefault(kind, {})[name] = phase.value
            self._export(kind)

    def forget(self, kind: str, name: str) -> None:
        with self._lock:
            self._phases.get(kind, {}).pop(name, None)
            self._export(kind)

    def counts(self, kind: str) -> dict[str, int]:
        """Known objects of ``kind`` by phase."""
        with self._lock:
            known = self._phases.get(kind, {})
            return {phase.value: sum(1 for v in known.values() if v == phase.value) for phase in Phase}

    def _export(self, kind: str) -> None:
        known = self._phases.get(kind, {})
        for phase in Phase:
            self._gauge.labels(kind=kind, phase=phase.value).set(
                sum(1 for value in known.values() if value == phase.value)
            )


class KekAgeCollector(Collector):
    """``medcloud_kek_age_seconds{hospital}``: computed at scrape time, so it never needs a status write."""

    def __init__(self) -> None:
        self._created: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def set(self, hospital: str, created_at: datetime) -> None:
        with self._lock:
            self._created[hospital] = created_at

    def forget(self, hospital: str) -> None:
        with self._lock:
            self._created.pop(hospital, None)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "medcloud_kek_age_seconds",
            "Age of each hospital's current key-encryption key version, in seconds.",
            labels=["hospital"],
        )
        now = time.time()
        with self._lock:
            for hospital, created in sorted(self._created.items()):
                family.add_metric([hospital], max(0.0, now - created.timestamp()))
        yield family


PHASES = PhaseTracker(RESOURCES)
KEK_AGE = KekAgeCollector()
REGISTRY.register(KEK_AGE)


@contextmanager
def reconcile_timer(kind: str) -> Iterator[None]:
    """Observe the duration of one reconciliation, whatever its outcome."""
    started = time.monotonic()
    try:
        yield
    finally:
        RECONCILE_DURATION.labels(kind=kind).observe(time.monotonic() - started)


def serve(port: int, address: str) -> WSGIServer:
    """Start the metrics endpoint in a background thread; the caller shuts it down on cleanup."""
    server, _thread = start_http_server(port, addr=address, registry=REGISTRY)
    return server
