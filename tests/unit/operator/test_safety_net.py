"""The safety net's cheap test: a settled object (Ready at its generation, from this spec and settings) is skipped."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from typing import Any

import kopf

from medcloud.kube.client import HOSPITAL
from medcloud_operator.handlers.common import desired_digest, full_resync_due, is_settled, last_write_was_status
from medcloud_operator.safetynet import SafetyNet, SweptKind, record_key
from medcloud_operator.settings import OperatorSettings
from medcloud_operator.workqueue import WorkQueue

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


def test_each_object_has_exactly_one_full_resync_per_period_and_they_are_spread() -> None:
    interval, period = 300.0, 3600.0  # twelve ticks a period
    uids = [f"uid-{i}" for i in range(1200)]
    ticks = [t * interval + 1 for t in range(12)]
    due = {uid: [t for t in ticks if full_resync_due(uid, t, interval, period)] for uid in uids}
    assert all(len(times) == 1 for times in due.values())
    per_tick = Counter(times[0] for times in due.values())
    assert len(per_tick) == 12  # no tick left out ...
    assert max(per_tick.values()) < 2 * 1200 / 12  # ... and none carries twice its share


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


def test_a_resume_that_failed_for_now_is_retried_by_the_net_after_each_delay_until_it_succeeds() -> None:
    calls: list[int] = []

    def resync(name: str, namespace: str | None, memo: kopf.Memo, logger: object, retry: int) -> None:
        calls.append(retry)
        if retry < 2:
            raise kopf.TemporaryError("the API server is away", delay=0.01)

    async def scenario() -> tuple[bool, bool]:
        net = SafetyNet([SweptKind(HOSPITAL, resync, 300, True)])
        net.observe("Hospital", None, {"metadata": {"name": "riverton", "uid": "u1"}}, False)
        queue = WorkQueue(1)
        key = record_key(None, "riverton")
        net.retry_later("Hospital", key, 0.01, kopf.Memo(), queue)
        await asyncio.sleep(0)
        marked_while_waiting = ("Hospital", key) in net._retrying
        for _ in range(1000):  # bounded: a broken retry fails the assertions below instead of hanging
            if len(calls) >= 3:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        return marked_while_waiting, ("Hospital", key) in net._retrying

    marked, still_marked = asyncio.run(scenario())
    assert marked  # the sweep leaves it alone meanwhile
    assert calls == [0, 1, 2]
    assert not still_marked
