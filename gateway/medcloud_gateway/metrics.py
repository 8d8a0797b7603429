"""Prometheus metrics of one gateway, in a registry of its own (several gateways in one process never collide)."""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter

from medcloud.models import DeviceProtocol
from medcloud_gateway.presence import Presence


class Result(StrEnum):
    """What became of a reading."""

    STORED = "stored"
    """Written to the RecordStore, encrypted."""
    REJECTED = "rejected"
    """The reading itself is wrong (unknown kind or unit, bad JSON, ...): the sender must fix it."""
    FAILED = "failed"
    """A good reading that could not be written (storage or key service unavailable)."""


class GatewayMetrics:
    def __init__(self, presence: Presence | None = None) -> None:
        self.registry = CollectorRegistry()
        self.presence = presence or Presence()
        """lastSeen and state per device; also ``medcloud_gateway_devices{state}`` in this registry."""
        self.registry.register(self.presence)
        self.readings = Counter(
            "medcloud_gateway_readings",
            "Device readings handled by the gateway, by protocol and result (stored, rejected, failed).",
            ["protocol", "result"],
            registry=self.registry,
        )
        # Every series exists from the start, so a rate over a result that never happened is 0, not absent.
        for protocol in DeviceProtocol:
            for result in Result:
                self.readings.labels(protocol.value, result.value)

    def count(self, protocol: DeviceProtocol, result: Result, amount: int = 1) -> None:
        self.readings.labels(protocol.value, result.value).inc(amount)

    def value(self, protocol: DeviceProtocol, result: Result) -> float:
        """The counter's current value (tests and the CLI's summary read it)."""
        sample = self.registry.get_sample_value(
            "medcloud_gateway_readings_total", {"protocol": protocol.value, "result": result.value}
        )
        return sample or 0.0
