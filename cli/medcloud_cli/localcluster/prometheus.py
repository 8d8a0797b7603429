"""A real Prometheus on the local cluster, scraping MedCloud with the chart's own alert rules loaded.

Prometheus is Debian's ``prometheus`` package (it ships ``promtool``);
scripts/bootstrap.sh installs it. The rules are the chart's PrometheusRule
(charts/medcloud/templates/prometheusrule.yaml) rendered by ``helm template``,
so what fires here is exactly what fires in a cluster. The chart's rules
select series by ``job`` (the Service name a ServiceMonitor produces) and
``namespace``; the scrape jobs here carry the same labels, so the rules need
no rewriting.

`medcloud dev up` starts it after the platform (:func:`start_prometheus`);
the drills (tests/integration/test_drills.py) read alerts through its HTTP API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from medcloud_cli.localcluster.binaries import KUBERNETES_VERSION, ensure_binaries
from medcloud_cli.localcluster.cluster import LocalCluster
from medcloud_cli.localcluster.process import ServerProcess, free_port

CHART = Path(__file__).resolve().parents[3] / "charts" / "medcloud"
RELEASE = "medcloud"
NAMESPACE = "medcloud-system"
# The Service names the chart's ServiceMonitors scrape, hence the rules' `job` labels.
OPERATOR_JOB = f"{RELEASE}-operator-metrics"
API_JOB = f"{RELEASE}-api"
KEYSERVICE_JOB = f"{RELEASE}-keyservice"
EXCHANGE_JOB = f"{RELEASE}-exchange"
# Fast enough for drills to see a change within seconds, slow enough to cost nothing idle.
SCRAPE_INTERVAL = "2s"
EVALUATION_INTERVAL = "2s"


def prometheus_binary() -> Path:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        raise FileNotFoundError("prometheus is not installed: apt-get install prometheus (scripts/bootstrap.sh does)")
    return Path(found)


def promtool_binary() -> Path:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        raise FileNotFoundError("promtool is not installed: apt-get install prometheus (scripts/bootstrap.sh does)")
    return Path(found)


def chart_rules(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The chart's PrometheusRule ``spec`` (``{"groups": [...]}``), a Prometheus rule file as it stands.

    ``values`` go on top of ``monitoring.prometheusRule.enabled=true`` (as a values file would).
    """
    helm = ensure_binaries(["helm"])["helm"]
    merged = {"monitoring": {"prometheusRule": {"enabled": True}}}
    for key, value in (values or {}).items():
        merged[key] = value
    # `helm template` assumes Kubernetes 1.20 unless told; the chart wants >= 1.30.
    args = [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBERNETES_VERSION]
    proc = subprocess.run(
        [*args, "-f", "-"],
        input=json.dumps(merged),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"helm template failed: {proc.stderr}")
    for doc in yaml.safe_load_all(proc.stdout):
        if doc and doc.get("kind") == "PrometheusRule":
            return {"groups": doc["spec"]["groups"]}
    raise RuntimeError("the chart rendered no PrometheusRule")


def scrape_config(targets: Mapping[str, str], rule_file: Path) -> dict[str, Any]:
    """A Prometheus configuration scraping ``targets`` (job -> host:port) with ``rule_file`` loaded."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": EVALUATION_INTERVAL},
        "rule_files": [str(rule_file)],
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [address], "labels": {"namespace": NAMESPACE}}],
            }
            for job, address in targets.items()
        ],
    }


def start_prometheus(
    cluster: LocalCluster,
    targets: Mapping[str, str],
    rules: Mapping[str, Any] | None = None,
    *,
    keep_history: bool = True,
) -> tuple[ServerProcess, str]:
    """Start Prometheus for ``targets`` (job -> host:port) with the chart's rules; its URL.

    ``keep_history=False`` starts from an empty database. A drill needs that: series an earlier
    Prometheus stored here (another drill's ``up == 1`` of a target now gone) stay visible for the
    five-minute lookback and would keep an ``absent(up == 1)`` alert from firing.
    """
    directory = cluster.state_dir / "prometheus"
    if not keep_history:
        shutil.rmtree(directory / "data", ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    rule_file = directory / "medcloud-rules.yaml"
    rule_file.write_text(yaml.safe_dump(dict(rules) if rules is not None else chart_rules(), sort_keys=False))
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(scrape_config(targets, rule_file), sort_keys=False))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = cluster.spawn(
        "prometheus",
        [
            str(prometheus_binary()),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={directory / 'data'}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        (port,),
    )
    proc.wait_ready(lambda: ready(url), 60)
    if cluster.state is not None:
        cluster.state.ports["prometheus"] = port
    return proc, url


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:  # noqa: S310 - loopback URL we built
            return bool(response.status == 200)
    except OSError:
        return False


def api_get(url: str, path: str, **params: str) -> Any:
    """The ``data`` of one Prometheus HTTP API answer (``/api/v1/...``)."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}{path}{query}", timeout=5) as response:  # noqa: S310 - loopback URL we built
        answer = json.loads(response.read())
    if answer.get("status") != "success":
        raise RuntimeError(f"Prometheus answered {answer}")
    return answer["data"]


def firing(url: str) -> dict[str, str]:
    """Alerts now pending or firing: name -> state."""
    return {a["labels"]["alertname"]: a["state"] for a in api_get(url, "/api/v1/alerts")["alerts"]}


def target_health(url: str) -> dict[str, str]:
    """Each scrape job's health (up, down, unknown)."""
    return {t["labels"]["job"]: t["health"] for t in api_get(url, "/api/v1/targets")["activeTargets"]}
