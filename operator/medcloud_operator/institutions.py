"""Which Hospitals claim which institution code, kept from the Hospital watch: a lookup instead of a LIST.

Every Hospital reconcile asks who holds its code. Listing every Hospital for
that made each reconcile cost grow with the province (a 5,000-item LIST per
reconcile, and the memory to parse it); this index is fed by the watch the
operator holds anyway (the initial listing included) and answers from memory.
It keeps three strings per Hospital: name, code, creation time, never a body.

Kopf's own indexes live in its event loop; reconciles run in worker threads,
so this one has a lock of its own. The rule of who holds a code is
:func:`medcloud.tenancy.institutions.code_holder`, the control API's too.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from medcloud.kube.client import Manifest
from medcloud.tenancy.institutions import code_holder


def _claimant(name: str, created: str, code: str) -> Manifest:
    """The parts of a Hospital that the holder rule reads."""
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": {"institutionCode": code}}


class InstitutionCodes:
    """Hospital name -> (institution code, creation timestamp), and the holder of a code by the shared rule."""

    def __init__(self) -> None:
        self._claims: dict[str, tuple[str, str]] = {}
        self._by_code: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._claims)

    def observe(self, body: Mapping[str, Any]) -> None:
        """A Hospital as the watch shows it (added, changed, or listed at start)."""
        meta = body.get("metadata") or {}
        name = str(meta["name"])
        code = str((body.get("spec") or {}).get("institutionCode") or "")
        with self._lock:
            self._drop(name)
            self._claims[name] = (code, str(meta.get("creationTimestamp") or ""))
            self._by_code.setdefault(code, set()).add(name)

    def forget(self, name: str) -> None:
        """The Hospital is gone."""
        with self._lock:
            self._drop(name)

    def claimants(self, code: str) -> list[str]:
        with self._lock:
            return sorted(self._by_code.get(code, ()))

    def holder(self, code: str) -> str | None:
        """The Hospital that keeps ``code`` (the oldest claimant), or None."""
        with self._lock:
            claimants = [_claimant(name, self._claims[name][1], code) for name in self._by_code.get(code, ())]
        return code_holder(claimants, code)

    def _drop(self, name: str) -> None:
        previous = self._claims.pop(name, None)
        if previous is not None:
            names = self._by_code.get(previous[0])
            if names is not None:
                names.discard(name)
                if not names:
                    del self._by_code[previous[0]]
