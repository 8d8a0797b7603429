"""Every alert of the chart, proven by Prometheus's rule tester: ``promtool check rules`` and ``promtool test rules``.

The rules are the chart's PrometheusRule rendered by ``helm template``
(``medcloud_cli.localcluster.prometheus.chart_rules``, the same rules `dev up`
loads into its Prometheus); the cases are tests/data/alerts/medcloud-rules.test.yaml:
each alert fires on series that break its threshold for longer than its ``for``,
with its exact labels and annotations, and stays quiet on healthy ones.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from medcloud_cli.localcluster.prometheus import chart_rules, promtool_binary

CASES = Path(__file__).resolve().parents[1] / "data" / "alerts" / "medcloud-rules.test.yaml"


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rules")
    (directory / "rules.yaml").write_text(yaml.safe_dump(chart_rules(), sort_keys=False))
    shutil.copy(CASES, directory / CASES.name)
    return directory


def promtool(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool_binary()), *args], cwd=directory, capture_output=True, text=True, check=False, timeout=120
    )


def alerts(rules: dict[str, Any]) -> set[str]:
    return {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def test_the_rendered_rules_are_valid_prometheus_rules(rules_dir: Path) -> None:
    checked = promtool(rules_dir, "check", "rules", "rules.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_and_clears_as_its_cases_say(rules_dir: Path) -> None:
    tested = promtool(rules_dir, "test", "rules", CASES.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = yaml.safe_load(CASES.read_text())["tests"]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    firing = {c["alertname"] for c in checks if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in checks if not c.get("exp_alerts")}
    every = alerts(chart_rules())
    assert len(every) >= 10
    assert every - firing == set(), "alerts without a firing case"
    assert every - quiet == set(), "alerts without a quiet case"
