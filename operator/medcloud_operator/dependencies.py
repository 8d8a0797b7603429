"""Which workloads read which objects: the operator's own index, kept from the workloads' watch events.

An AppInstance reads its RecordStore (and a DeviceGateway), a DeviceGateway
its RecordStore, and every workload the tenant's LimitRange (its ceiling).
When one of those objects changes, the workloads that read it are
reconciled; this index makes finding them a lookup, never a LIST.

It is the operator's, not a Kopf index, because one of the objects it answers
for, the LimitRange, is watched outside Kopf (:mod:`medcloud_operator.childwatch`):
Kopf hands its indexes only to its own handlers, and would list and keep
every tenant's LimitRange to run a handler on it. The index is fed by the
workloads' own Kopf event handler (the initial listing, then every change and
deletion), one object's events in order.
"""

from __future__ import annotations

from collections.abc import Iterable

DependencyKey = tuple[str, str, str]
"""(namespace, kind, name) of an object workloads depend on."""

WorkloadKey = tuple[str, str]
"""(namespace, name) of a workload."""


class DependencyIndex:
    """The objects each workload of one kind reads, and the reverse: who reads an object."""

    def __init__(self) -> None:
        self._reads: dict[WorkloadKey, frozenset[DependencyKey]] = {}
        self._readers: dict[DependencyKey, set[str]] = {}

    def __len__(self) -> int:
        return len(self._reads)

    def update(self, namespace: str, name: str, reads: Iterable[DependencyKey]) -> None:
        """The workload ``namespace/name`` now reads exactly ``reads``."""
        workload = (namespace, name)
        new = frozenset(reads)
        old = self._reads.get(workload, frozenset())
        if new == old:
            return
        for key in old - new:
            self._drop(key, name)
        for key in new - old:
            self._readers.setdefault(key, set()).add(name)
        self._reads[workload] = new

    def forget(self, namespace: str, name: str) -> None:
        """The workload is gone."""
        for key in self._reads.pop((namespace, name), frozenset()):
            self._drop(key, name)

    def readers(self, namespace: str, kind: str, name: str) -> list[str]:
        """The workloads (names, in the object's namespace, sorted) that read the object."""
        return sorted(self._readers.get((namespace, kind, name), ()))

    def _drop(self, key: DependencyKey, reader: str) -> None:
        readers = self._readers.get(key)
        if readers is None:
            return
        readers.discard(reader)
        if not readers:
            del self._readers[key]
