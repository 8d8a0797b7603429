"""The exchange's Prometheus series (see docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
