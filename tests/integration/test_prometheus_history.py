"""A drill's Prometheus starts from an empty database, so no series of an earlier run hides its alert.

Found when the outage drills ran before the operator drills in one session: the
second Prometheus reopened the first one's database, whose last ``up == 1`` of a
target that no longer existed stayed visible for the five-minute lookback, so
``absent(up == 1)`` (MedcloudOperatorDown) never fired.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from medcloud_cli.localcluster import prometheus
from medcloud_cli.localcluster.cluster import LocalCluster
from medcloud_cli.localcluster.process import free_port
from tests.support import wait_for

JOB = "history-probe"
UP_QUERY = f'up{{job="{JOB}"}} == 1'


class Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"probe_value 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def target() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def running(cluster: LocalCluster, address: str, *, keep_history: bool) -> Iterator[str]:
    proc, url = prometheus.start_prometheus(cluster, {JOB: address}, rules={"groups": []}, keep_history=keep_history)
    try:
        yield url
    finally:
        proc.stop()
        cluster.processes.remove(proc)
        cluster.save_state()


def up_series(url: str) -> list[Any]:
    return list(prometheus.api_get(url, "/api/v1/query", query=UP_QUERY)["result"])


def test_a_fresh_prometheus_sees_no_up_series_of_an_earlier_one(local_cluster: Any, target: str) -> None:
    if not isinstance(local_cluster, LocalCluster):
        pytest.skip("starts Prometheus beside the local cluster")
    with running(local_cluster, target, keep_history=False) as url:
        wait_for(lambda: up_series(url), "a successful scrape of the target")
    # The target is gone (another drill's operator, on another port); the next Prometheus scrapes elsewhere.
    with running(local_cluster, f"127.0.0.1:{free_port()}", keep_history=False) as url:
        assert up_series(url) == [], "a series of the earlier Prometheus is still visible"
