"""One structured JSON line per mutating request: who, what, which hospital, and the result.

Never a body, a query string or a header: request bodies may carry medical
data and headers carry tokens. The user is the name the cluster gave the
caller's token; a request refused before authentication has no user.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medcloud_api.metrics import route_template

log = logging.getLogger("medcloud_api.audit")

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REQUEST_ID_HEADER = b"x-request-id"


def audit_record(scope: Scope, status: int, duration: float, request_id: str) -> dict[str, Any]:
    """The audit line of a finished request, from what routing and the dependencies left in the scope."""
    state = scope.get("state") or {}
    path_params = scope.get("path_params") or {}
    route = route_template(scope)
    hospital = state.get("audit_hospital") or (path_params.get("name") if route.startswith("/v1/hospitals") else None)
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "event": "medcloud.api.audit",
        "requestId": request_id,
        "user": state.get("audit_user"),
        "method": scope["method"],
        "route": route,
        "hospital": hospital,
        "status": status,
        "outcome": "success" if status < 400 else "failure",
        "durationMs": round(duration * 1000, 1),
    }


class AuditMiddleware:
    """Tags every response with a request id and writes the audit line of every mutating request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        status = 500
        audited = False

        def write_audit_line() -> None:
            nonlocal audited
            if audited or scope["method"] not in MUTATING:
                return
            audited = True
            record = audit_record(scope, status, time.perf_counter() - started, request_id)
            log.info(json.dumps(record, separators=(",", ":")))

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Audit before the caller sees the end of the response: an acknowledged
                # change always has its audit line already written.
                write_audit_line()
            await send(message)

        try:
            await self.app(scope, receive, send_tagged)
        finally:
            # A request that failed before it sent a complete response is audited too.
            write_audit_line()
