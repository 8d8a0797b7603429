"""Withdrawing deleted MQTT gateways' broker grants (medcloud_operator.brokergrants and the pure comparison)."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes.client.exceptions import ApiException

from medcloud.tenancy import mqtt
from medcloud_operator import brokergrants
from medcloud_operator.brokergrants import BrokerGrants
from medcloud_operator.builders.brokertrust import granted_identities, outlived_grants
from medcloud_operator.peeringpause import PeeringPause, Self
from medcloud_operator.workqueue import WorkQueue


def gateway(name: str, namespace: str, protocols: list[str]) -> dict[str, object]:
    spec = {"protocols": protocols, "deviceClasses": ["spo2"], "recordStore": "vitals"}
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def configmap(*grants: mqtt.GatewayGrant) -> dict[str, object]:
    return {"data": {mqtt.ACL_KEY: mqtt.acl(grants)}}


def test_a_grant_outlives_only_a_gateway_that_is_gone_or_no_longer_speaks_mqtt() -> None:
    live = configmap(
        mqtt.GatewayGrant("gw-ward-1.hospital-a", "a"),
        mqtt.GatewayGrant("gw-ward-2.hospital-a", "a"),
        mqtt.GatewayGrant("gw-home.hospital-b", "b"),
    )
    assert granted_identities(live) == {"gw-ward-1.hospital-a", "gw-ward-2.hospital-a", "gw-home.hospital-b"}
    existing = [
        gateway("ward-1", "hospital-a", ["mqtt"]),
        gateway("ward-2", "hospital-a", ["mllp"]),  # MQTT removed from its spec: no grant any more
        {"metadata": {"name": "broken", "namespace": "hospital-b"}, "spec": {"protocols": ["mqtt"]}},
    ]
    assert outlived_grants(live, existing) == {"gw-ward-2.hospital-a", "gw-home.hospital-b"}
    assert outlived_grants(None, existing) == set()


def active_pause() -> PeeringPause:
    """No peering objects to follow: the replica acts at once (as a standalone operator)."""
    return PeeringPause(None, [], Self("test", 0, sharded=False), mandatory=False)


def test_a_deletion_is_rebuilt_and_a_refused_rebuild_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(brokergrants, "RETRY_SECONDS", (0.01,))
    calls: list[str] = []

    async def scenario() -> None:
        grants = BrokerGrants()
        rebuilt = asyncio.Event()

        def rebuild() -> bool:
            calls.append("rebuild")
            if calls.count("rebuild") == 1:
                raise ApiException(status=503, reason="Service Unavailable")
            rebuilt.set()
            return True

        def withdraw_outlived() -> set[str]:
            calls.append("check")
            return set()

        task = asyncio.get_running_loop().create_task(
            grants.run(
                WorkQueue(1), active_pause(), rebuild=rebuild, withdraw_outlived=withdraw_outlived, check_seconds=3600
            )
        )
        while "check" not in calls:
            await asyncio.sleep(0.01)
        grants.withdraw()
        grants.withdraw()  # two deletions before the task ran: one rebuild serves both
        await asyncio.wait_for(rebuilt.wait(), 10)
        assert grants.due == 0
        task.cancel()

    asyncio.run(scenario())
    # Checked once on starting; the refused rebuild tried again, the check not repeated.
    assert calls == ["check", "rebuild", "rebuild"]


def test_a_refused_check_is_tried_again_until_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(brokergrants, "RETRY_SECONDS", (0.01,))
    answers: list[str] = []

    async def scenario() -> None:
        done = asyncio.Event()

        def withdraw_outlived() -> set[str]:
            answers.append("check")
            if len(answers) < 3:
                raise OSError("connection refused")
            done.set()
            return {"gw-gone.hospital-a"}

        task = asyncio.get_running_loop().create_task(
            BrokerGrants().run(
                WorkQueue(1),
                active_pause(),
                rebuild=lambda: True,
                withdraw_outlived=withdraw_outlived,
                check_seconds=3600,
            )
        )
        await asyncio.wait_for(done.wait(), 10)
        task.cancel()

    asyncio.run(scenario())
    assert answers == ["check"] * 3
