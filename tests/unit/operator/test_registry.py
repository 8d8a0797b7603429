"""The operator's handlers are registered from the settings read at start, under the ids Kopf already knows."""

from __future__ import annotations

import os
import subprocess
import sys

from medcloud_operator import background
from medcloud_operator.main import build_registry
from medcloud_operator.settings import OperatorSettings

# Kopf keeps handler progress under these ids (annotations on every object): renaming one is a migration.
CHANGE_HANDLERS = {
    "appinstance_changed",
    "consortium_changed",
    "device_changed",
    "devicegateway_changed",
    "hospital_changed",
    "hospital_deleted",
    "recordstore_changed",
    "recordstore_deleted",
}
SAFETY_NET = {
    "appinstance_resync",
    "consortium_resync",
    "device_resync",
    "devicegateway_resync",
    "hospital_resync",
    "recordstore_refresh",
}
INDEXES = {"consortia_by_member"}
"""Kopf indexes: each makes Kopf list and keep its kind. The workloads' dependency index is the operator's own."""


def test_every_kind_registers_its_triggers_under_the_released_ids() -> None:
    registry = build_registry(OperatorSettings())

    assert {h.id for h in registry._changing.get_all_handlers()} == CHANGE_HANDLERS
    assert {h.id for h in registry._indexing.get_all_handlers()} == INDEXES
    watching = {h.id for h in registry._watching.get_all_handlers()}
    # The safety net's records come from these watch handlers (the old timers' ids); no timer per object.
    assert watching >= SAFETY_NET
    # A Hospital event costs one Kopf handler invocation: the indexes it feeds hang off that one handler.
    on_hospitals = [
        h for h in registry._watching.get_all_handlers() if h.selector and h.selector.any_name == "hospitals"
    ]
    assert [h.id for h in on_hospitals] == ["hospital_resync"]
    hooks = background.of(registry).watch_hooks["Hospital"]
    assert {hook.__name__ for hook in hooks} == {"hospital_seen", "member_changed"}
    timers = {h.id for h in registry._spawning.get_all_handlers()}
    assert timers <= {"devicegateway_presence", "consortium_exchange_probe"}
    activities = {h.id for h in registry._activities.get_all_handlers()}
    assert activities == {"configure", "background", "background_stop", "login", "shutdown", "hospitals"}


def test_children_are_watched_outside_kopf_by_a_server_side_label_selector() -> None:
    registry = build_registry(OperatorSettings())

    watches = {watch.id: watch for watch in background.of(registry).child_watches}
    assert {"drift-namespaces", "drift-resourcequotas", "drift-appinstance-deployments"} <= set(watches)
    assert watches["drift-namespaces"].selector == (
        "app.kubernetes.io/managed-by=medcloud-operator,app.kubernetes.io/component=tenancy,medcloud.io/hospital"
    )
    kopf_watched = {h.selector.any_name for h in registry._watching.get_all_handlers() if h.selector is not None}
    children = {"namespaces", "resourcequotas", "networkpolicies", "roles", "deployments", "limitranges"}
    assert not kopf_watched & children
    # The tenant's LimitRange, which every workload reads, is a child watch too (Kopf would list every tenant's).
    for component in ("appinstance", "devicegateway"):
        limits = watches[f"{component}-dependency-limitranges"]
        assert limits.selector == "app.kubernetes.io/managed-by=medcloud-operator,app.kubernetes.io/component=tenancy"


def test_sweep_intervals_come_from_the_settings_given_not_from_import_time() -> None:
    registry = build_registry(OperatorSettings(resync_seconds=7, recordstore_refresh_seconds=3))

    intervals = {kind: swept.interval for kind, swept in background.of(registry).safety_net.kinds.items()}
    assert intervals == {kind: 3.0 if kind == "RecordStore" else 7.0 for kind in intervals}
    assert set(intervals) == {"AppInstance", "Consortium", "Device", "DeviceGateway", "Hospital", "RecordStore"}


def test_importing_the_operator_reads_no_environment() -> None:
    """A setting that cannot be parsed fails when the operator starts, never when a module is imported."""
    env = {**os.environ, "MEDCLOUD_RESYNC_SECONDS": "not a number"}
    imports = "import medcloud_operator.main, medcloud_operator.handlers.recordstore, medcloud_operator.command"
    imported = subprocess.run([sys.executable, "-c", imports], env=env, capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr

    start = "from medcloud_operator.settings import OperatorSettings; OperatorSettings()"
    started = subprocess.run([sys.executable, "-c", start], env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode != 0
    assert "resync_seconds" in started.stderr
