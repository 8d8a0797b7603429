"""Which devices a gateway has heard from: lastSeen per device, Online / Stale / Offline, a metric per state.

A device is **Online** if its last stored reading is at most ``online`` old,
**Stale** up to ``offline``, **Offline** after that. The clock is the gateway's
(when a reading was stored), not the device's, which may be wrong or replaying.
At most ``capacity`` devices are tracked (the least recently seen is forgotten
first), so memory stays bounded whatever senders do.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class DeviceState(StrEnum):
    ONLINE = "Online"
    STALE = "Stale"
    OFFLINE = "Offline"


@dataclass(frozen=True)
class Seen:
    device_id: str
    last_seen: datetime
    state: DeviceState

    def as_json(self) -> dict[str, str]:
        return {"deviceId": self.device_id, "lastSeen": self.last_seen.isoformat(), "state": self.state.value}


class Presence(Collector):
    """Thread-safe: transports record from worker threads, Prometheus reads from the server's."""

    def __init__(
        self,
        online: timedelta = timedelta(minutes=5),
        offline: timedelta = timedelta(hours=1),
        capacity: int = 100_000,
    ) -> None:
        if not timedelta(0) < online <= offline:
            raise ValueError("the online grace period must be positive and at most the offline one")
        self.online, self.offline, self._capacity = online, offline, capacity
        self._last: OrderedDict[str, datetime] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, device_id: str, when: datetime | None = None) -> None:
        moment = when or datetime.now(UTC)
        with self._lock:
            self._last[device_id] = moment
            self._last.move_to_end(device_id)
            while len(self._last) > self._capacity:
                self._last.popitem(last=False)

    def state(self, last_seen: datetime, now: datetime) -> DeviceState:
        age = now - last_seen
        if age <= self.online:
            return DeviceState.ONLINE
        return DeviceState.STALE if age <= self.offline else DeviceState.OFFLINE

    def snapshot(self, now: datetime | None = None) -> list[Seen]:
        moment = now or datetime.now(UTC)
        with self._lock:
            items = list(self._last.items())
        return [Seen(device, last, self.state(last, moment)) for device, last in sorted(items)]

    def counts(self, now: datetime | None = None) -> dict[DeviceState, int]:
        counts = dict.fromkeys(DeviceState, 0)
        for item in self.snapshot(now):
            counts[item.state] += 1
        return counts

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "medcloud_gateway_devices",
            "Devices this gateway stored readings from, by state (Online, Stale, Offline; see docs/devices.md).",
            labels=["state"],
        )
        for state, count in self.counts().items():
            gauge.add_metric([state.value], count)
        yield gauge
