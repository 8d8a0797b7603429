"""Prometheus metrics of the API: requests by route, method and status, and their latency.

Each app gets its own registry, so several apps in one process (tests) never
collide, and the route label is the route's template (``/v1/hospitals/{name}``),
never the raw path: hospital names must not multiply the series.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"

# Onboarding waits for the tenant namespace and progress streams last minutes:
# the default buckets (up to 10 s) would put both in +Inf.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


def route_template(scope: Scope) -> str:
    """The template of the route that served the request, or ``unmatched``."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "medcloud_api_requests_total",
            "Requests answered by the MedCloud control API.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "medcloud_api_request_duration_seconds",
            "Time from request to the end of the response (a progress stream counts whole).",
            ["route", "method"],
            buckets=BUCKETS,
            registry=self.registry,
        )

    def endpoint(self, _request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts and times every HTTP request, errors included."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # An exception that escapes every handler becomes a 500 outside this middleware.
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route, method = route_template(scope), str(scope["method"])
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.duration.labels(route, method).observe(time.perf_counter() - started)
