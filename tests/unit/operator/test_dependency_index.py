"""The operator's index of which workloads read which objects (medcloud_operator.dependencies)."""

from __future__ import annotations

from medcloud_operator.dependencies import DependencyIndex

STORE = ("hospital-a", "RecordStore", "device-data")
LIMITS = ("hospital-a", "LimitRange", "medcloud-limits")


def test_readers_follow_what_each_workload_reads_now() -> None:
    index = DependencyIndex()
    index.update("hospital-a", "ecg", [STORE, LIMITS])
    index.update("hospital-a", "bp", [LIMITS])
    assert index.readers(*STORE) == ["ecg"]
    assert index.readers(*LIMITS) == ["bp", "ecg"]

    # ecg now reads another store: the old one has no reader left.
    index.update("hospital-a", "ecg", [("hospital-a", "RecordStore", "archive"), LIMITS])
    assert index.readers(*STORE) == []
    assert index.readers("hospital-a", "RecordStore", "archive") == ["ecg"]
    assert len(index) == 2


def test_a_forgotten_workload_reads_nothing_and_other_namespaces_are_apart() -> None:
    index = DependencyIndex()
    index.update("hospital-a", "ecg", [STORE, LIMITS])
    index.update("hospital-b", "ecg", [("hospital-b", "LimitRange", "medcloud-limits")])
    index.forget("hospital-a", "ecg")
    index.forget("hospital-a", "never-seen")
    assert index.readers(*LIMITS) == []
    assert index.readers(*STORE) == []
    assert index.readers("hospital-b", "LimitRange", "medcloud-limits") == ["ecg"]
    assert len(index) == 1
