"""Withdrawing a deleted MQTT gateway's broker grant: after each deletion until it succeeds, and when acting starts.

A DeviceGateway's broker identity may read its hospital's readings because
the broker's ACL grants it (:mod:`medcloud_operator.brokertrust`); its client
certificate stays valid until it expires, so the ACL is what ends the access.
A deletion is a watch event, which Kopf does not retry, and which nobody sees
while no operator runs. So the withdrawal is this task's:

- a deletion marks the bundle due (:meth:`BrokerGrants.withdraw`); the task
  rebuilds it in the work queue, as a change, and while the API fails it tries
  again after a growing wait (``RETRY_SECONDS``), counted in
  ``medcloud_broker_grant_withdrawals_total{result}``;
- whenever this replica starts to act (at start, after a peering pause), and
  every ``check_seconds`` after, it compares the ACL's grants with the MQTT
  gateways that exist (two reads, whatever the count) and rebuilds only when a
  grant outlived its gateway: one deleted while no operator ran, or an ACL
  edited by hand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from medcloud_operator import metrics
from medcloud_operator.peeringpause import PeeringPause
from medcloud_operator.workqueue import Priority, WorkQueue

log = logging.getLogger(__name__)

CONTROLLER = "devicegateway"
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits before trying a failed withdrawal again, growing while it keeps failing."""


class BrokerGrants:
    """The task that withdraws outlived grants (see the module's docstring)."""

    def __init__(self) -> None:
        self._deleted = 0
        self._wake = asyncio.Event()

    def withdraw(self) -> None:
        """An MQTT DeviceGateway was deleted: rebuild the bundle without its grant."""
        self._deleted += 1
        self._wake.set()

    @property
    def due(self) -> int:
        """Deletions whose rebuild has not succeeded yet."""
        return self._deleted

    async def run(
        self,
        queue: WorkQueue,
        pause: PeeringPause,
        *,
        rebuild: Callable[[], bool],
        withdraw_outlived: Callable[[], set[str]],
        check_seconds: float,
    ) -> None:
        """Until cancelled. ``rebuild()`` rebuilds the bundle from what exists (True: written);
        ``withdraw_outlived()`` compares first and rebuilds only then, returning the identities withdrawn."""
        failures = 0
        check = True
        while True:
            if pause.paused:
                await pause.wait_active()
                check = True
            self._wake.clear()
            deleted, self._deleted = self._deleted, 0
            try:
                if check:
                    outlived = await queue.run(CONTROLLER, Priority.RESUME, withdraw_outlived)
                    check = False
                    if outlived:
                        metrics.BROKER_GRANT_WITHDRAWALS.labels(result="outlived").inc(len(outlived))
                        log.info("Broker grants withdrawn, their gateways gone: %s", ", ".join(sorted(outlived)))
                if deleted and await queue.run(CONTROLLER, Priority.CHANGE, rebuild):
                    metrics.BROKER_GRANT_WITHDRAWALS.labels(result="withdrawn").inc()
                    log.info("Deleted DeviceGateways' broker grants withdrawn (%d deletions)", deleted)
                failures = 0
            except Exception as exc:
                # The API refused (or something no one foresaw): the task must not die of it, or no deleted
                # gateway's grant would be withdrawn again until the operator restarts.
                self._deleted += deleted
                failures += 1
                metrics.BROKER_GRANT_WITHDRAWALS.labels(result="failed").inc()
                wait = RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1]
                expected = isinstance(exc, ApiException | HTTPError | OSError)
                log.warning(
                    "Broker grants not withdrawn yet (trying again in %.0f s): %s",
                    wait,
                    exc,
                    exc_info=None if expected else exc,
                )
                await asyncio.sleep(wait)
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=check_seconds)
            except TimeoutError:
                check = True
