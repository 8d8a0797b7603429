"""Prometheus metrics, in controller-runtime's naming style; each is documented in docs/metrics.md.

The series live in the process-wide default registry and are served on their
own port (``MEDCLOUD_METRICS_PORT``), apart from the liveness endpoint, so a
scrape never competes with a probe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from medcloud.models import Phase

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
DRIFT_REPAIRS = Counter(
    "medcloud_drift_repairs_total",
    "Child objects found changed or deleted by someone else and put back, by kind.",
    ["kind"],
)
RESOURCES = Gauge(
    "medcloud_resources",
    "MedCloud resources this operator replica knows, by kind and phase.",
    ["kind", "phase"],
)
DEVICES = Gauge(
    "medcloud_devices",
    "Devices of each DeviceGateway by enrolment state (pending, enrolled, revoked), counted from its Device objects.",
    ["namespace", "gateway", "state"],
)

RESULT_SUCCESS = "success"
RESULT_ERROR = "error"
RESULT_REQUEUE = "requeue"


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
