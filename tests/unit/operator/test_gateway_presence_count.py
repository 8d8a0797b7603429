"""The operator's side of a DeviceGateway's ``active`` count (medcloud_operator.presence): pure, one local server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medcloud.models import DeviceCounts, DeviceGatewayStatus
from medcloud_operator import presence
from medcloud_operator.builders import devicegateway as gw_b
from medcloud_operator.builders.workload import Findings

REPORT_A = {
    "devices": [
        {"deviceId": "ox-1", "lastSeen": "2026-12-02T06:00:00Z", "state": "Online"},
        {"deviceId": "bp-2", "lastSeen": "2026-12-02T05:00:00Z", "state": "Stale"},
        {"deviceId": "0123456789ABCDEF", "lastSeen": "2026-12-02T06:00:00Z", "state": "Online"},
    ]
}
REPORT_B = {"devices": [{"deviceId": "ox-1", "state": "Online"}, {"deviceId": "ecg-3", "state": "Online"}]}


def test_active_counts_enrolled_devices_some_replica_saw_within_the_grace_period() -> None:
    enrolled = ["ox-1", "bp-2", "ecg-3", "never-seen"]
    # ox-1 on both replicas counts once; bp-2 is Stale; the MLLP id is no enrolled Device.
    assert presence.active_devices([REPORT_A, REPORT_B], enrolled) == 2
    assert presence.active_devices([REPORT_A], enrolled) == 1
    assert presence.active_devices([], enrolled) == 0
    assert presence.active_devices([{"devices": None}, {}], enrolled) == 0


def test_only_ready_endpoints_are_asked_each_once() -> None:
    slices = [
        {"endpoints": [{"addresses": ["10.88.0.5"], "conditions": {"ready": True}}, {"addresses": ["10.88.0.6"]}]},
        {"endpoints": [{"addresses": ["10.88.0.5"]}, {"addresses": ["10.88.0.7"], "conditions": {"ready": False}}]},
        {"endpoints": None},
    ]
    assert presence.endpoint_addresses(slices) == ["10.88.0.5", "10.88.0.6"]


def test_an_address_outside_the_pod_ranges_is_never_contacted() -> None:
    assert presence.allowed("10.88.0.5", ["10.88.0.0/24"])
    assert not presence.allowed("10.244.0.5", ["10.88.0.0/24"])
    assert not presence.allowed("not-an-ip", ["10.88.0.0/24"])
    # One replica outside: no answer at all (and no connection was opened: nothing listens there).
    assert presence.ask_replicas(["10.88.0.5", "192.0.2.1"], 8080, ["10.88.0.0/24"]) is None
    assert presence.ask_replicas([], 8080, []) == []


@pytest.fixture
def replica() -> Iterator[int]:
    """A local HTTP server answering GET /devices as a gateway replica's health port does."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(REPORT_A).encode() if self.path == "/devices" else b"{}"
            self.send_response(200 if self.path == "/devices" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_replicas_are_asked_and_one_that_does_not_answer_leaves_the_count_unknown(replica: int) -> None:
    assert presence.ask_replicas(["127.0.0.1"], replica, ["127.0.0.0/8"]) == [REPORT_A]
    closed = replica + 1 if replica < 65535 else replica - 1
    assert presence.fetch_presence("127.0.0.1", closed, timeout=1) is None


def test_a_reconcile_keeps_the_active_count_the_presence_timer_wrote() -> None:
    previous = DeviceGatewayStatus(devices=DeviceCounts(enrolled=2, active=1))
    findings = Findings(
        generation=1, dependencies=None, available=None, failure=None, spec_failed=False, now=datetime.now(UTC)
    )
    status = gw_b.next_status(previous, endpoints={}, devices=DeviceCounts(enrolled=3), **findings)
    assert status.devices is not None
    assert (status.devices.enrolled, status.devices.active) == (3, 1)
    # Never reported: it stays unset rather than claiming 0.
    fresh = gw_b.next_status(DeviceGatewayStatus(), endpoints={}, devices=DeviceCounts(enrolled=3), **findings)
    assert fresh.devices is not None
    assert fresh.devices.active is None
