"""Every series the operator exports is in docs/metrics.md, under its exact name."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from medcloud_operator import metrics

DOCS = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"


def documented() -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", DOCS.read_text(encoding="utf-8"), flags=re.MULTILINE))


def exported() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            family = value.describe()[0]
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def test_every_operator_metric_is_documented() -> None:
    assert {"controller_runtime_reconcile_total", "workqueue_depth", "medcloud_reconcile_total"} <= exported()
    assert exported() - documented() == set()


def test_controller_runtime_names_are_spelled_as_controller_runtime_spells_them() -> None:
    expected = {
        "controller_runtime_reconcile_total",
        "controller_runtime_reconcile_errors_total",
        "controller_runtime_reconcile_time_seconds",
        "controller_runtime_active_workers",
        "controller_runtime_max_concurrent_reconciles",
        "workqueue_depth",
        "workqueue_adds_total",
        "workqueue_retries_total",
        "workqueue_queue_duration_seconds",
        "workqueue_work_duration_seconds",
    }
    assert expected <= exported()
