"""The exchange's Prometheus series (see docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REQUESTS = Counter(
    "medcloud_exchange_requests_total",
    "Requests answered by the exchange, by interaction and HTTP status.",
    ["interaction", "code"],
)
DECISIONS = Counter(
    "medcloud_exchange_consent_decisions_total",
    "Consent decisions by result (permit or deny).",
    ["result"],
)
BREAK_GLASS = Counter(
    "medcloud_exchange_break_glass_total",
    "Emergency accesses (purpose of use ETREAT) by the hospital that broke the glass.",
    ["hospital"],
)
DECISION_SECONDS = Histogram(
    "medcloud_exchange_consent_decision_seconds",
    "Time to decide one request (consents already read).",
    buckets=(0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01),
)

# A scrape must finish within Prometheus' scrape timeout (1 s under `dev up`, 10 s by default).
DATABASE_CHECK_SECONDS = 0.5


class DatabaseUp(Collector):
    """``medcloud_exchange_database_up``, asked of the database at scrape time.

    Read at scrape time, not from the last request's fate, so the gauge (and the alert on it) turns as soon as
    the database does, with or without traffic. One per app, in its own registry: several exchanges may run
    in one process (the tests do), each with its own consortium and database.
    """

    def __init__(self, consortium: str, reachable: Callable[[float], bool]) -> None:
        self._consortium = consortium
        self._reachable = reachable

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "medcloud_exchange_database_up",
            "1 if the exchange's index database answered a query at this scrape, 0 if not.",
            labels=["consortium"],
        )
        gauge.add_metric([self._consortium], 1.0 if self._reachable(DATABASE_CHECK_SECONDS) else 0.0)
        yield gauge


def exchange_registry(consortium: str, reachable: Callable[[float], bool]) -> CollectorRegistry:
    """The series of one exchange app (beside the process-wide ones in the default registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseUp(consortium, reachable))
    return registry
