"""Each Hospital's ``status.quotaUsage`` as last written or watched: a quota event that moves nothing is free.

The quota controller rewrites a tenant quota's ``status.used`` whenever it
recounts, and on a new quota it writes the usage the onboarding already
reported (nothing is in a namespace created moments before). Copying usage to
the Hospital cost a GET of the Hospital and, when it differed, a PATCH; with
this record a quota event whose usage the Hospital already shows costs none.

It keeps one small hash per Hospital (never the usage or a body), fed by the
operator's own status writes (the usage field is the operator's alone) and by
the Hospital watch it holds anyway (a restart, an older event: at worst the
hash is missing and the refresh reads the Hospital as before). The hash is
Python's, stable within the process, which is all it is compared within.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _digest(usage: Mapping[str, Any]) -> int:
    return hash(frozenset((str(key), str(value)) for key, value in usage.items()))


class SeenQuotaUsage:
    """Hospital name -> hash of the ``status.quotaUsage`` it was last written with or watched showing."""

    def __init__(self) -> None:
        # Written from the event loop, read from worker threads: single dict operations, atomic under the GIL.
        self._digests: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._digests)

    def observe(self, hospital: str, status: Mapping[str, Any] | None) -> None:
        """A Hospital's status as the watch shows it (added, changed, or listed at start)."""
        self.record(hospital, (status or {}).get("quotaUsage"))

    def record(self, hospital: str, usage: Mapping[str, Any] | None) -> None:
        """What the Hospital now shows, the operator's status write done (None: nothing known)."""
        if usage is None:
            self._digests.pop(hospital, None)
        else:
            self._digests[hospital] = _digest(usage)

    def forget(self, hospital: str) -> None:
        self._digests.pop(hospital, None)

    def shows(self, hospital: str, usage: Mapping[str, Any]) -> bool:
        """Whether the Hospital, as last watched, already reports exactly ``usage``."""
        seen = self._digests.get(hospital)
        return seen is not None and seen == _digest(usage)
