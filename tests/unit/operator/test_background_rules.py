"""The pure rules of the work outside Kopf: Kopf's peering pause, the child watches' selector, the sweep's choice."""

from __future__ import annotations

import datetime

import kopf

from medcloud.kube.client import HOSPITAL, RECORD_STORE
from medcloud_operator.childwatch import label_selector
from medcloud_operator.peeringpause import Self, pauses
from medcloud_operator.safetynet import Record, SweptKind, to_sweep

NOW = datetime.datetime(2026, 12, 3, 6, 0, tzinfo=datetime.UTC)
ME = Self("me@host/20261203/abc", priority=100, sharded=False)


def peer(priority: int, seconds_ago: float, lifetime: int = 60) -> dict[str, object]:
    seen = NOW - datetime.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lastseen": seen.isoformat(), "lifetime": lifetime}


def test_a_live_peer_of_higher_priority_pauses_and_a_dead_one_does_not() -> None:
    assert pauses({"other": peer(200, 10)}, ME, NOW)
    assert not pauses({"other": peer(200, 61)}, ME, NOW)
    assert not pauses({"other": peer(50, 10)}, ME, NOW)


def test_a_live_peer_of_the_same_priority_pauses_both_unless_sharded() -> None:
    assert pauses({"other": peer(100, 10)}, ME, NOW)
    assert not pauses({"other": peer(100, 10)}, Self(ME.identity, 100, sharded=True), NOW)


def test_its_own_record_never_pauses_it_and_kopfs_own_time_format_is_read() -> None:
    assert not pauses({ME.identity: peer(500, 0)}, ME, NOW)
    # Kopf writes isoformat() of an aware UTC time; a record with no time counts as seen now.
    assert pauses({"other": {"priority": 101}}, ME, NOW)
    assert pauses({"other": {"priority": 101, "lastseen": "2026-12-03T05:59:30Z"}}, ME, NOW)
    assert not pauses({"other": {"priority": 101, "lastseen": "2026-12-03T05:58:00+00:00"}}, ME, NOW)


def test_kopf_label_filters_become_the_api_servers_selector() -> None:
    selector = label_selector({"a.io/managed-by": "op", "a.io/hospital": kopf.PRESENT, "a.io/legacy": kopf.ABSENT})
    assert selector == "a.io/managed-by=op,a.io/hospital,!a.io/legacy"


def swept(kind_safety_net: bool = True) -> SweptKind:
    kind = HOSPITAL if kind_safety_net else RECORD_STORE
    records = {
        "/settled": Record("settled", None, "u1", settled=True),
        "/due": Record("due", None, "u2", settled=True),
        "/unsettled": Record("unsettled", None, "u3", settled=False),
        "/queued": Record("queued", None, "u4", settled=False),
    }
    return SweptKind(kind, lambda **_: None, 300.0, kind_safety_net, records)


def test_a_tick_queues_the_unsettled_and_the_due_and_leaves_the_settled_and_the_queued() -> None:
    chosen, pending, settled = to_sweep(
        swept(), 1000.0, pending=lambda key: key == "/queued", due=lambda uid, now, interval: uid == "u2"
    )
    assert sorted(chosen) == ["/due", "/unsettled"]
    assert (pending, settled) == (1, 1)


def test_a_kind_whose_resync_always_works_is_swept_whole_but_for_what_is_queued() -> None:
    chosen, pending, settled = to_sweep(
        swept(kind_safety_net=False), 1000.0, pending=lambda key: key == "/queued", due=lambda *_: False
    )
    assert sorted(chosen) == ["/due", "/settled", "/unsettled"]
    assert (pending, settled) == (1, 0)
