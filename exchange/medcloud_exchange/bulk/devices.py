"""The members' device Observations for ``$export``: read from each member's device RecordStore.

The gateways write their Observations encrypted into each hospital's device store (the policy's
``deviceStore``, ``device-data`` by default), which the exchange does not index. An export reads them
where they are, through the record client and the key service like every other record (the operator
grants the exchange that store's keys when the policy names it), and de-identifies them line by line.

The ground-floor layout read here (docs/record-encryption.md, ``medcloud.records``): every record under
``fhir/Observation/`` holds either one Observation (``<id>.json``) or a batch of them (``<batch>.ndjson``,
one Observation a line), read by the ground floor's ``medcloud.records.batches``: each reading once per
export however many batches hold it. A record's last modification is when its readings changed: what ``_since`` and the
export's transaction time compare.

Each Observation leaves scoped to the member that holds it: ``performer`` is ``Organization/<member>``
(the indicators count by institution; the gateway names none) and the subject, a hospital's own
opaque patient id, becomes ``Patient/<member>.<id>`` before the pseudonym, so two hospitals' equal
local ids stay two patients.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from medcloud.records.batches import read_resources
from medcloud.records.client import RecordInfo

OBSERVATION = "Observation"
DEVICE_PREFIX = f"fhir/{OBSERVATION}/"
"""Where the gateway's records of Observations are, one reading or one batch per record (for the bench)."""


class DeviceStore(Protocol):
    """What the reader needs of a member's device store (a :class:`~medcloud.records.client.RecordClient`)."""

    def list(self, prefix: str = "") -> Iterator[RecordInfo]: ...

    def get_bytes(self, name: str, *, version_id: str | None = None) -> bytes: ...


@dataclass(frozen=True)
class DeviceObservation:
    """One exported reading: the Observation scoped to its member, and the patient keying its date shift."""

    holder: str
    patient: str
    resource: dict[str, Any]


def changed_between(info: RecordInfo, until: datetime, since: datetime | None) -> bool:
    """Whether a record belongs to an export up to ``until`` of what changed after ``since``."""
    when = info.last_modified
    if when is None:
        return False
    return when <= until and (since is None or when > since)


def scoped(observation: dict[str, Any], holder: str) -> DeviceObservation:
    """``observation`` as the export carries it before de-identification: its member's patient and performer."""
    out = dict(observation)
    reference = str((observation.get("subject") or {}).get("reference", ""))
    local = reference.removeprefix("Patient/") if reference.startswith("Patient/") else ""
    patient = f"{holder}.{local}" if local else ""
    if patient:
        out["subject"] = {"reference": f"Patient/{patient}"}
    else:
        out.pop("subject", None)
    out["performer"] = [{"reference": f"Organization/{holder}"}]
    return DeviceObservation(holder, patient, out)


class _Window:
    """A device store as the ground floor's batch reader sees it: only the records changed in the window,
    oldest first (so a reading held by two batches is taken from the first, as of the export)."""

    def __init__(self, store: DeviceStore, until: datetime, since: datetime | None) -> None:
        self._store, self._until, self._since = store, until, since

    def list(self, prefix: str = "") -> Iterator[RecordInfo]:
        infos = [i for i in self._store.list(prefix) if i.is_record and changed_between(i, self._until, self._since)]
        return iter(sorted(infos, key=lambda i: (i.last_modified, i.name)))

    def get_bytes(self, name: str, *, version_id: str | None = None) -> bytes:
        return self._store.get_bytes(name, version_id=version_id)


def read(
    stores: Iterable[tuple[str, DeviceStore]], until: datetime, since: datetime | None = None
) -> Iterator[DeviceObservation]:
    """Every device Observation of ``stores`` (member, store) changed in the export's window, oldest first,
    each reading once (``medcloud.records.batches.read_resources``: batched and single records alike)."""
    for holder, store in stores:
        for observation in read_resources(_Window(store, until, since), OBSERVATION):
            yield scoped(observation, holder)
