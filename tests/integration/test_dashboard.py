"""The dashboard a person looks at: `medcloud analytics publish` writes the suppressed indicators to the real
MinIO, the control API (real apiserver: TokenReview + SubjectAccessReview) renders them, and Debian's
headless Chromium loads the page on loopback: the charts are drawn and a suppressed cell shows ``<5``.

Chromium cannot send a bearer token itself, so it loads the page through a loopback proxy that adds the
commission's token to each request, as the city's ingress (or a browser extension) would.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from medcloud_analytics import flatten
from medcloud_analytics.lake import Lake
from medcloud_api.config import APISettings
from medcloud_api.main import create_app
from medcloud_cli.localcluster.analytics import AnalyticsBucket, make_analytics_bucket
from medcloud_cli.localcluster.cluster import MinioInfo
from tests.analytics_activity import activity
from tests.analytics_support import analytics_cli
from tests.bulk_support import COMMISSION_ROLE
from tests.integration.test_api import serve
from tests.operator_support import REPO, ClusterAdmin
from tests.png import pixels

pytestmark = [pytest.mark.cluster, pytest.mark.minio]

NAMESPACE = "dashboard-test-callers"
CHROMIUM = shutil.which("chromium")
VEGA_BLUE = (0x4C, 0x78, 0xA8)  # Vega's first category colour: the bars of one month


def _token(admin: ClusterAdmin, account: str) -> str:
    with contextlib.suppress(client.ApiException):
        admin.core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": account}})
    request = {"spec": {"expirationSeconds": 3600}}
    return str(admin.core.create_namespaced_service_account_token(account, NAMESPACE, request).status.token)


@pytest.fixture(scope="module")
def tokens(local_cluster: Any, k8s_api_client: client.ApiClient) -> Iterator[dict[str, str]]:
    """The commission's service account (bound to its role) and one with no role."""
    admin = ClusterAdmin(k8s_api_client)
    local_cluster.kubectl("apply", "-f", str(REPO / "deploy" / "city-health-commission-rbac.yaml"))
    with contextlib.suppress(client.ApiException):
        admin.core.create_namespace({"metadata": {"name": NAMESPACE}})
    binding = "dashboard-test-commission"
    with contextlib.suppress(client.ApiException):
        admin.rbac.create_cluster_role_binding(
            {
                "metadata": {"name": binding},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": COMMISSION_ROLE},
                "subjects": [{"kind": "ServiceAccount", "name": "commission", "namespace": NAMESPACE}],
            }
        )
    try:
        yield {"commission": _token(admin, "commission"), "nobody": _token(admin, "nobody")}
    finally:
        with contextlib.suppress(client.ApiException):
            admin.rbac.delete_cluster_role_binding(binding)
        with contextlib.suppress(client.ApiException):
            admin.core.delete_namespace(NAMESPACE)


@pytest.fixture(scope="module")
def bucket(minio_server: MinioInfo) -> AnalyticsBucket:
    """An analytics bucket with its own two users (docs/analytics.md): the tests use no root key."""
    return make_analytics_bucket(minio_server, f"analytics-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def lake(minio_server: MinioInfo, bucket: AnalyticsBucket) -> Lake:
    lake = Lake(minio_server.endpoint, bucket.bucket, bucket.writer_key, bucket.writer_secret)
    lake.write(flatten.table(list(activity())), "batch-1")
    result = analytics_cli(lake, "publish")
    assert result.exit_code == 0, result.output
    assert f"s3://{lake.bucket}/dashboard/indicators.json" in result.output
    return lake


@pytest.fixture(scope="module")
def api_url(local_cluster: Any, lake: Lake, bucket: AnalyticsBucket) -> Iterator[str]:
    # The API reads with the dashboard key: the published document, nothing else.
    settings = APISettings(
        kubeconfig=local_cluster.kubeconfig,
        analytics_endpoint=lake.endpoint,
        analytics_bucket=lake.bucket,
        analytics_access_key=bucket.reader_key,
        analytics_secret_key=bucket.reader_secret,
    )
    with serve(create_app(settings)) as url:
        yield url


@contextlib.contextmanager
def bearer_proxy(upstream: str, token: str) -> Iterator[str]:
    """A loopback HTTP proxy to ``upstream`` that adds ``Authorization: Bearer <token>`` to every GET."""

    class Forward(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            got = httpx.get(upstream + self.path, headers={"Authorization": f"Bearer {token}"}, timeout=60)
            self.send_response(got.status_code)
            self.send_header("Content-Type", got.headers.get("content-type", "text/plain"))
            self.send_header("Content-Length", str(len(got.content)))
            self.end_headers()
            self.wfile.write(got.content)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    thread = threading.Thread(target=server.serve_forever, name="bearer-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def chromium(tmp_path: Path, url: str, *mode: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "Debian's chromium is missing: run scripts/bootstrap.sh"
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1200,900",
        *mode,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_the_dashboard_is_the_commissions_alone_and_errors_are_problems(api_url: str, tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=api_url, timeout=60) as http:
        anonymous = http.get("/v1/dashboard")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"].startswith("application/problem+json")
        nobody = http.get("/v1/dashboard", headers={"Authorization": f"Bearer {tokens['nobody']}"})
        assert nobody.status_code == 403
        assert "consortia/export" in nobody.json()["detail"]
        page = http.get("/v1/dashboard", headers={"Authorization": f"Bearer {tokens['commission']}"})
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert page.text.count("<svg") == 5


def test_an_api_without_published_indicators_answers_404(
    local_cluster: Any, minio_server: MinioInfo, tokens: dict[str, str]
) -> None:
    empty = make_analytics_bucket(minio_server, f"analytics-{uuid.uuid4().hex[:8]}")
    settings = APISettings(
        kubeconfig=local_cluster.kubeconfig,
        analytics_endpoint=empty.endpoint,
        analytics_bucket=empty.bucket,
        analytics_access_key=empty.reader_key,
        analytics_secret_key=empty.reader_secret,
    )
    with serve(create_app(settings)) as url:
        got = httpx.get(f"{url}/v1/dashboard", headers={"Authorization": f"Bearer {tokens['commission']}"}, timeout=60)
    assert got.status_code == 404
    assert got.json()["type"].endswith("not-found")
    assert "medcloud analytics publish" in got.json()["detail"]


def test_headless_chromium_draws_the_charts_and_a_suppressed_cell_shows_no_count(
    api_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    with bearer_proxy(api_url, tokens["commission"]) as proxy:
        dom = chromium(tmp_path, f"{proxy}/v1/dashboard", "--dump-dom").stdout
        shot = tmp_path / "dashboard.png"
        chromium(tmp_path, f"{proxy}/v1/dashboard", f"--screenshot={shot}")

    # The DOM the browser built: five charts, each with its bars or label marks.
    assert dom.count("<svg") == 5
    assert len(re.findall(r'class="mark-rect role-mark', dom)) == 5
    section = dom[dom.index('id="chart-referrals"') : dom.index('id="chart-recognition"')]
    marks = section[section.index("mark-text role-mark") :]
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", marks[: marks.index("</g>")])
    # 8 up and 6 across; the downward referrals (under five patients) only as <5, never as a number.
    assert sorted(labels) == ["&lt;5", "6", "8"]
    (down,) = re.findall(r'<text aria-label="from → to tier: county → township;[^"]*"', marks)
    assert "label: &lt;5" in down

    # The screenshot: the bars are really painted (Vega's blue), not an empty or broken page.
    width, height, rgb = pixels(shot.read_bytes())
    assert (width, height) == (1200, 900)
    blue = sum(1 for p in rgb if all(abs(a - b) <= 12 for a, b in zip(p, VEGA_BLUE, strict=True)))
    ink = sum(1 for p in rgb if p != (255, 255, 255))
    assert blue > 2000, f"only {blue} bar pixels in the screenshot"
    assert ink > 20000, f"only {ink} non-white pixels in the screenshot"
