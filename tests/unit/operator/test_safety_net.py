"""The safety net's cheap test: a settled object (Ready at its generation, from this spec and settings) is skipped."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections import Counter
from typing import Any

from medcloud_operator.handlers.common import desired_digest, is_settled, last_write_was_status
from medcloud_operator.safetynet import SafetyNet
from medcloud_operator.settings import OperatorSettings
from medcloud_operator.workqueue import Priority, WorkQueue

FINGERPRINT = OperatorSettings().fingerprint()


def settled_hospital(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "maple", "generation": 3, "uid": "0b7c"},
        "spec": {"tier": "county", "quota": {"cpu": "4"}, **spec},
    }
    body["status"] = {"phase": "Ready", "observedGeneration": 3, "observedDigest": desired_digest(body, FINGERPRINT)}
    return body


def test_ready_at_its_generation_from_this_spec_and_settings_is_settled() -> None:
    assert is_settled(settled_hospital(), FINGERPRINT)


def test_a_changed_spec_a_new_generation_or_another_phase_is_not() -> None:
    changed = settled_hospital()
    changed["spec"]["quota"]["cpu"] = "8"
    newer = settled_hospital()
    newer["metadata"]["generation"] = 4
    degraded = settled_hospital()
    degraded["status"]["phase"] = "Degraded"
    never = settled_hospital()
    del never["status"]["observedDigest"]
    for body in (changed, newer, degraded, never):
        assert not is_settled(body, FINGERPRINT)


def test_settings_that_shape_children_unsettle_everything_but_runtime_ones_do_not() -> None:
    body = settled_hospital()
    assert not is_settled(body, OperatorSettings(storage_cidrs=["10.1.0.0/24"]).fingerprint())
    assert is_settled(body, OperatorSettings(max_concurrent_reconciles=16, peering_priority=7).fingerprint())


def test_the_digest_ignores_key_order() -> None:
    body = settled_hospital()
    reordered = copy.deepcopy(body)
    reordered["spec"] = dict(reversed(list(body["spec"].items())))
    assert desired_digest(body, FINGERPRINT) == desired_digest(reordered, FINGERPRINT)


def resync(**_: Any) -> None:
    raise AssertionError("the sweep only chooses here; it does not reconcile")


def test_each_settled_object_has_exactly_one_full_resync_per_period_and_they_are_spread() -> None:
    net = SafetyNet(interval=300.0, period=3600.0)  # twelve ticks a period
    queue = WorkQueue(1)
    for i in range(1200):
        net.observe("hospital", "Hospital", f"h{i}", None, f"uid-{i}", True, resync)
    chosen = {tick: [t.name for t in net.due(tick, queue)] for tick in range(100, 112)}
    per_object = Counter(name for names in chosen.values() for name in names)
    assert len(per_object) == 1200
    assert set(per_object.values()) == {1}
    assert all(names for names in chosen.values())  # no tick left out ...
    assert max(len(names) for names in chosen.values()) < 2 * 1200 / 12  # ... and none carries twice its share
    queue.close()


def test_an_unsettled_object_is_chosen_every_tick_unless_its_reconcile_is_queued() -> None:
    net = SafetyNet(interval=300.0, period=3600.0)
    queue = WorkQueue(1)
    net.observe("hospital", "Hospital", "maple", None, "uid-1", False, resync)
    net.observe("hospital", "Hospital", "gone", None, "uid-2", False, resync)
    net.forget("hospital", "gone", None)
    assert [[t.name for t in net.due(tick, queue)] for tick in range(3)] == [["maple"]] * 3

    async def while_queued() -> list[str]:
        release = threading.Event()
        # A reconcile of maple is on its way (a change, say): the sweep adds none beside it.
        change = asyncio.create_task(queue.run("hospital", Priority.CHANGE, release.wait, key="/maple"))
        await asyncio.sleep(0)
        try:
            return [t.name for t in net.due(0, queue)]
        finally:
            release.set()
            await change

    assert asyncio.run(while_queued()) == []
    assert len(net) == 1
    queue.close()


def managed(*entries: tuple[str, str, str]) -> dict[str, Any]:
    """A body whose managedFields are (manager, time, subresource) entries."""
    return {
        "metadata": {
            "managedFields": [
                {"manager": manager, "operation": "Update", "time": time_, **({"subresource": sub} if sub else {})}
                for manager, time_, sub in entries
            ]
        }
    }


def test_a_status_write_after_the_operators_own_is_usage_only() -> None:
    later = managed(("medcloud-operator", "2026-12-02T06:00:00Z", ""), ("kcm", "2026-12-02T06:00:05Z", "status"))
    same_second = managed(("medcloud-operator", "2026-12-02T06:00:00Z", ""), ("kcm", "2026-12-02T06:00:00Z", "status"))
    assert last_write_was_status(later, "medcloud-operator")
    assert last_write_was_status(same_second, "medcloud-operator")


def test_an_edit_by_anyone_else_is_not_usage_only_even_in_a_tie() -> None:
    edited = managed(
        ("medcloud-operator", "2026-12-02T06:00:00Z", ""),
        ("kcm", "2026-12-02T06:00:05Z", "status"),
        ("kubectl-patch", "2026-12-02T06:00:09Z", ""),
    )
    tie = managed(("kcm", "2026-12-02T06:00:05Z", "status"), ("kubectl-patch", "2026-12-02T06:00:05Z", ""))
    assert not last_write_was_status(edited, "medcloud-operator")
    assert not last_write_was_status(tie, "medcloud-operator")
    assert not last_write_was_status(managed(("medcloud-operator", "2026-12-02T06:00:00Z", "")), "medcloud-operator")
    assert not last_write_was_status({"metadata": {}}, "medcloud-operator")
