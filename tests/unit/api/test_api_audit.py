"""The audit line and the metrics' route label (no cluster)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from fastapi.testclient import TestClient
from kubernetes import client
from starlette.types import Message, Receive, Scope, Send

from medcloud_api.audit import AuditMiddleware, audit_record
from medcloud_api.config import APISettings
from medcloud_api.main import create_app
from medcloud_api.metrics import route_template


class Route:
    path = "/v1/hospitals/{name}"


def test_the_audit_line_names_who_what_which_hospital_and_the_result() -> None:
    scope = {
        "method": "PATCH",
        "route": Route(),
        "path_params": {"name": "maple"},
        "state": {"audit_user": "system:serviceaccount:city:city-admin"},
    }
    record = audit_record(scope, 200, 0.0123, "abc")

    assert record["event"] == "medcloud.api.audit"
    assert record["user"] == "system:serviceaccount:city:city-admin"
    assert (record["method"], record["route"], record["hospital"], record["status"]) == (
        "PATCH",
        "/v1/hospitals/{name}",
        "maple",
        200,
    )
    assert record["outcome"] == "success"
    assert record["durationMs"] == 12.3


def test_onboarding_names_its_hospital_from_the_request_and_failures_have_no_user() -> None:
    class Collection:
        path = "/v1/hospitals"

    scope = {"method": "POST", "route": Collection(), "path_params": {}, "state": {"audit_hospital": "maple"}}
    record = audit_record(scope, 401, 0.0, "abc")
    assert (record["hospital"], record["user"], record["outcome"]) == ("maple", None, "failure")


def test_routes_are_labelled_by_template_and_unmatched_paths_by_one_value() -> None:
    assert route_template({"route": Route()}) == "/v1/hospitals/{name}"
    assert route_template({}) == "unmatched"


def test_every_mutating_request_is_audited_without_its_body(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(APISettings(), api_client=client.ApiClient())
    http = TestClient(app)
    with caplog.at_level(logging.INFO, logger="medcloud_api.audit"):
        # No token: refused before the cluster is asked, so no cluster is needed.
        response = http.post("/v1/hospitals", json={"name": "maple", "spec": {"displayName": "Patient Zhang"}})
        http.get("/healthz")

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "medcloud_api.audit"]
    record = json.loads(line)
    assert (record["method"], record["route"], record["status"], record["user"]) == ("POST", "/v1/hospitals", 401, None)
    assert "Patient Zhang" not in line
    assert response.headers["x-request-id"] == record["requestId"]


def test_metrics_count_requests_by_route_method_and_status() -> None:
    app = create_app(APISettings(), api_client=client.ApiClient())
    http = TestClient(app)
    http.get("/healthz")
    http.get("/v1/hospitals/maple")  # 401: no token
    http.get("/no/such/path")

    text = http.get("/metrics").text

    assert 'medcloud_api_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'medcloud_api_requests_total{method="GET",route="/v1/hospitals/{name}",status="401"} 1.0' in text
    assert 'medcloud_api_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'medcloud_api_request_duration_seconds_count{method="GET",route="/healthz"} 1.0' in text


def test_the_audit_line_is_written_before_the_response_ends(caplog: pytest.LogCaptureFixture) -> None:
    """A caller that has its whole response can rely on the audit line being there already."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        await send({"type": "http.response.body", "body": b"}"})

    lines_seen_at_each_send: list[int] = []

    async def send(message: Message) -> None:
        lines_seen_at_each_send.append(len([r for r in caplog.records if r.name == "medcloud_api.audit"]))

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "POST", "path": "/v1/hospitals", "path_params": {}, "state": {}}
    with caplog.at_level(logging.INFO, logger="medcloud_api.audit"):
        asyncio.run(AuditMiddleware(app)(scope, receive, send))

    assert lines_seen_at_each_send == [0, 0, 1], "audited once, before the last body message"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "medcloud_api.audit"]
    assert json.loads(line)["status"] == 201
