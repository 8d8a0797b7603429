"""One structured JSON line per key request: who asked, for which store and key version, and what they got.

Never the key, never the token. Written to the ``medcloud_keyservice.audit``
logger at INFO, one JSON object per line, so a log pipeline can ship it to
the audit store without parsing free text.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

log = logging.getLogger("medcloud_keyservice.audit")

EVENT = "medcloud_keyservice.unwrap"


class Result(StrEnum):
    GRANTED = "granted"
    UNAUTHENTICATED = "unauthenticated"
    DENIED = "denied"
    NOT_FOUND = "not-found"
    SHREDDED = "shredded"
    UNAVAILABLE = "unavailable"
    INVALID = "invalid-request"


@dataclass(frozen=True)
class UnwrapRecord:
    """What one request asked for and how it ended; the fields of the audit line."""

    namespace: str
    store: str
    requested: str
    """``current`` or the data-key version number asked for."""
    result: Result
    user: str | None = None
    groups: tuple[str, ...] = ()
    key_version: int | None = None
    """The data-key version handed out (None when nothing was)."""
    kek_version: int | None = None
    reason: str = ""
    source: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "event": EVENT,
                "user": self.user,
                "groups": list(self.groups),
                "namespace": self.namespace,
                "recordStore": self.store,
                "requested": self.requested,
                "keyVersion": self.key_version,
                "kekVersion": self.kek_version,
                "result": str(self.result),
                "reason": self.reason,
                "source": self.source,
            },
            separators=(",", ":"),
        )


def write(record: UnwrapRecord) -> None:
    log.info("%s", record.to_json())
