"""What every handler shares for the life of the operator process, kept in Kopf's ``memo``: one context.

It is built once, by the startup handler (``medcloud_operator.main``), from
the settings read at start: the Kubernetes client, the MinIO client (None
when the operator has no MinIO), the record of the operator's own writes,
per-object locks, the work queue and the metrics server.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import kopf

from medcloud_operator.apply import OwnWrites
from medcloud_operator.brokergrants import BrokerGrants
from medcloud_operator.institutions import InstitutionCodes
from medcloud_operator.kube import Kube
from medcloud_operator.quotausage import SeenQuotaUsage
from medcloud_operator.settings import OperatorSettings
from medcloud_operator.storage import Storage
from medcloud_operator.workqueue import WorkQueue

MEMO_KEY = "medcloud"


class KeyedLocks:
    """One lock per object name, so two triggers for the same Hospital never reconcile it at once.

    A Hospital's own handlers are serialised by Kopf, but its resync timer and
    the watch events of its children arrive independently of them.
    """

    def __init__(self) -> None:
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()

    def __call__(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks[key]


@dataclass
class OperatorContext:
    settings: OperatorSettings
    kube: Kube
    storage: Storage | None = None
    """The MinIO client; None when the settings name no MinIO (RecordStores then report StorageNotConfigured)."""
    own_writes: OwnWrites = field(default_factory=OwnWrites)
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    metrics_server: WSGIServer | None = None
    institution_codes: InstitutionCodes = field(default_factory=InstitutionCodes)
    """Who claims which institution code, kept from the Hospital watch (a lookup per reconcile, not a LIST)."""
    quota_usage: SeenQuotaUsage = field(default_factory=SeenQuotaUsage)
    """Each Hospital's ``status.quotaUsage`` as last watched (a hash): an unchanged quota usage costs no request."""
    queue: WorkQueue = field(default_factory=lambda: WorkQueue(4))
    """Every reconcile waits here for one of its workers (``max_concurrent_reconciles``), changes first."""
    background: list[asyncio.Task[None]] = field(default_factory=list)
    """The child watches, the safety net and the peering pause they follow (``medcloud_operator.main``)."""
    broker_grants: BrokerGrants = field(default_factory=BrokerGrants)
    """Withdraws deleted MQTT gateways' grants from the broker's ACL (a task of ``background``)."""
    settings_fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        self.settings_fingerprint = self.settings.fingerprint()


def get_context(memo: kopf.Memo) -> OperatorContext:
    ctx = memo.get(MEMO_KEY)
    if not isinstance(ctx, OperatorContext):
        raise RuntimeError("the operator context is missing: was the startup handler registered?")
    return ctx
