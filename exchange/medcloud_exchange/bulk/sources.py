"""Where each exported resource type lives: one SQL query over the exchange's index per type.

Every row names the resource, its patient, the member whose RecordStore holds the encrypted record, the
record's name there and when it last changed (what ``_since`` compares). The exchange keeps no
demographics, so a ``Patient`` is made from its index row alone (an opaque id, nothing to drop).
Device Observations are not indexed: :mod:`.devices` reads them from the members' device stores.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from medcloud_exchange import index
from medcloud_exchange.bulk.devices import OBSERVATION
from medcloud_exchange.stores import metadata_name
from medcloud_exchange.workflows.common import record_name


@dataclass(frozen=True)
class Source:
    """One resource type's rows: ``select`` yields (id, patient, holder, changed, version)."""

    resource_type: str
    select: str
    versioned: bool = False

    def record(self, resource_id: uuid.UUID, version: int | None) -> str:
        if self.resource_type == "DocumentReference":
            return metadata_name(resource_id)
        return record_name(self.resource_type, resource_id, version if self.versioned else None)


@dataclass(frozen=True)
class Row:
    resource_type: str
    id: uuid.UUID
    patient: uuid.UUID
    holder: str | None
    changed: datetime
    record: str | None


# Each select has the same five columns; {where} takes the export's filters (patients, _since, its time).
SOURCES: dict[str, Source] = {
    s.resource_type: s
    for s in (
        Source(
            "Patient", "SELECT id, id AS patient, NULL AS holder, created_at AS changed, NULL AS version FROM patient"
        ),
        Source(
            "DocumentReference",
            "SELECT id, patient_id AS patient, publisher AS holder, created_at AS changed, NULL AS version "
            "FROM document",
        ),
        Source(
            "DiagnosticReport",
            "SELECT id, patient_id AS patient, publisher AS holder, created_at AS changed, NULL AS version "
            "FROM exam_result",
        ),
        Source(
            "Coverage",
            "SELECT id, patient_id AS patient, registered_by AS holder, created_at AS changed, NULL AS version "
            "FROM coverage",
        ),
        Source(
            "ServiceRequest",
            "SELECT id, patient_id AS patient, requester AS holder, created_at AS changed, NULL AS version "
            "FROM service_request",
        ),
        Source(
            "Task",
            "SELECT t.id, s.patient_id AS patient, t.written_by AS holder, t.updated_at AS changed, t.version "
            "FROM task t JOIN service_request s ON s.id = t.service_request_id",
            versioned=True,
        ),
        Source(
            "Appointment",
            "SELECT id, patient_id AS patient, written_by AS holder, updated_at AS changed, version FROM appointment",
            versioned=True,
        ),
        Source(
            "Communication",
            "SELECT c.id, s.patient_id AS patient, c.sender AS holder, c.sent AS changed, NULL AS version "
            "FROM communication c JOIN service_request s ON s.id = c.service_request_id",
        ),
    )
}
RESOURCE_TYPES = (*SOURCES, OBSERVATION)
"""Every type the exchange exports: its index's, and the members' device Observations (:mod:`.devices`)."""


@dataclass(frozen=True)
class Selection:
    """Which rows an export carries: the types, the patients (None: all), changed after ``since``, up to ``until``."""

    types: tuple[str, ...]
    until: datetime
    since: datetime | None = None
    group: str | None = None
    """A member hospital: only patients with a record it holds (Group-level export)."""


_GROUP_PATIENTS = " UNION ".join(
    f"SELECT patient FROM ({s.select}) g WHERE g.holder = %(group)s"  # noqa: S608 - fixed text
    for s in SOURCES.values()
    if s.resource_type != "Patient"
)


def _query(source: Source, selection: Selection) -> tuple[str, dict[str, Any]]:
    where = ["changed <= %(until)s"]
    params: dict[str, Any] = {"until": selection.until}
    if selection.since is not None:
        where.append("changed > %(since)s")
        params["since"] = selection.since
    if selection.group is not None:
        where.append(f"patient IN ({_GROUP_PATIENTS})")
        params["group"] = selection.group
    sql = f"SELECT * FROM ({source.select}) r WHERE {' AND '.join(where)} ORDER BY changed, id"  # noqa: S608 - fixed text
    return sql, params


def rows(conn: index.Conn, resource_type: str, selection: Selection) -> Iterator[Row]:
    """The rows of one type the export carries, oldest change first."""
    source = SOURCES[resource_type]
    sql, params = _query(source, selection)
    with conn.cursor() as cur:
        for rid, patient, holder, changed, version in cur.execute(sql, params):
            record = None if source.resource_type == "Patient" else source.record(rid, version)
            yield Row(resource_type, rid, patient, holder, changed, record)


def count(conn: index.Conn, resource_type: str, selection: Selection) -> int:
    sql, params = _query(SOURCES[resource_type], selection)
    found = conn.execute(f"SELECT count(*) FROM ({sql}) c", params).fetchone()  # noqa: S608 - fixed text
    return int(found[0]) if found else 0
