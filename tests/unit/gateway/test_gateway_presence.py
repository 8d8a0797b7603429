"""lastSeen per device and Online / Stale / Offline from the grace periods, as a metric per state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from medcloud_gateway.metrics import GatewayMetrics
from medcloud_gateway.presence import DeviceState, Presence

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_states_follow_the_grace_periods() -> None:
    presence = Presence(online=timedelta(minutes=5), offline=timedelta(hours=1))
    presence.seen("ox-1", T0)
    presence.seen("bp-2", T0 - timedelta(minutes=30))
    presence.seen("gl-3", T0 - timedelta(hours=2))
    presence.seen("ox-1", T0 + timedelta(minutes=1))  # the latest reading counts
    states = {s.device_id: s.state for s in presence.snapshot(T0 + timedelta(minutes=5))}
    assert states == {"ox-1": DeviceState.ONLINE, "bp-2": DeviceState.STALE, "gl-3": DeviceState.OFFLINE}
    assert presence.counts(T0 + timedelta(minutes=7)) == {
        DeviceState.ONLINE: 0,
        DeviceState.STALE: 2,
        DeviceState.OFFLINE: 1,
    }
    assert presence.snapshot(T0)[2].as_json() == {
        "deviceId": "ox-1",
        "lastSeen": "2026-12-01T08:01:00+00:00",
        "state": "Online",
    }


def test_memory_is_bounded_forgetting_the_least_recently_seen() -> None:
    presence = Presence(capacity=2)
    for n, device in enumerate(("a", "b", "a", "c")):
        presence.seen(device, T0 + timedelta(seconds=n))
    assert [s.device_id for s in presence.snapshot(T0)] == ["a", "c"]


def test_grace_periods_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="at most the offline one"):
        Presence(online=timedelta(hours=2), offline=timedelta(hours=1))


def test_a_gauge_per_state_in_the_gateway_registry() -> None:
    metrics = GatewayMetrics()
    metrics.presence.seen("ox-1")
    registry = metrics.registry
    assert registry.get_sample_value("medcloud_gateway_devices", {"state": "Online"}) == 1
    assert registry.get_sample_value("medcloud_gateway_devices", {"state": "Stale"}) == 0
    assert registry.get_sample_value("medcloud_gateway_devices", {"state": "Offline"}) == 0
