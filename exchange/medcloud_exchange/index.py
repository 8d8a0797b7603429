"""The index in PostgreSQL: opaque patients, their blind-indexed identifiers, documents and consents.

Every function takes the connection of the caller's transaction, so a publish
(patient, identifiers, document row) commits or rolls back as one. Queries are
always parameterised; the search is restricted to the decision's
(publisher, category) pairs inside SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from medcloud_exchange.blind import blind_index
from medcloud_exchange.decision import ConsentStatus, ConsentTerms
from medcloud_exchange.outcomes import conflict, precondition_failed
from medcloud_exchange.resources import Identifier

Conn = psycopg.Connection[Any]


def patient_for(conn: Conn, key: bytes, identifiers: Iterable[Identifier]) -> uuid.UUID | None:
    """The one patient these identifiers belong to; None when none is known; 409 when they name two."""
    blinds = [blind_index(key, s, v) for s, v in identifiers]
    rows = conn.execute(
        "SELECT DISTINCT patient_id FROM patient_identifier WHERE blind = ANY(%s)", (blinds,)
    ).fetchall()
    if len(rows) > 1:
        raise conflict("these identifiers belong to different patients of the exchange; resolve the duplicate first")
    return rows[0][0] if rows else None


def ensure_patient(conn: Conn, key: bytes, identifiers: Sequence[Identifier]) -> uuid.UUID:
    """The patient of these identifiers, made and linked to all of them if needed (inside the caller's transaction)."""
    patient = patient_for(conn, key, identifiers)
    if patient is None:
        patient = uuid.uuid4()
        conn.execute("INSERT INTO patient (id) VALUES (%s)", (patient,))
    for system, value in identifiers:
        blind = blind_index(key, system, value)
        conn.execute(
            "INSERT INTO patient_identifier (blind, patient_id) VALUES (%s, %s) ON CONFLICT (blind) DO NOTHING",
            (blind, patient),
        )
        owner = conn.execute("SELECT patient_id FROM patient_identifier WHERE blind = %s", (blind,)).fetchone()
        if owner is None or owner[0] != patient:
            # Another request linked the identifier to another patient meanwhile.
            raise conflict("an identifier of this patient was just linked to another patient; retry")
    return patient


def patient_exists(conn: Conn, patient: uuid.UUID) -> bool:
    return conn.execute("SELECT 1 FROM patient WHERE id = %s", (patient,)).fetchone() is not None


@dataclass(frozen=True)
class DocumentRow:
    id: uuid.UUID
    patient_id: uuid.UUID
    publisher: str
    store: str
    category: str
    type_system: str
    type_code: str
    date: datetime
    content_type: str
    size: int
    content_version: str | None = None
    metadata_version: str | None = None


_DOC_COLUMNS = (
    "id, patient_id, publisher, store, category, type_system, type_code, date, content_type, size, "
    "content_version, metadata_version"
)


def insert_document(conn: Conn, row: DocumentRow) -> None:
    conn.execute(
        f"INSERT INTO document ({_DOC_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",  # noqa: S608 - fixed column list
        (
            row.id,
            row.patient_id,
            row.publisher,
            row.store,
            row.category,
            row.type_system,
            row.type_code,
            row.date,
            row.content_type,
            row.size,
            row.content_version,
            row.metadata_version,
        ),
    )


def document(conn: Conn, document_id: uuid.UUID) -> DocumentRow | None:
    with conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute(f"SELECT {_DOC_COLUMNS} FROM document WHERE id = %s", (document_id,)).fetchone()  # noqa: S608
    return DocumentRow(**found) if found else None


@dataclass(frozen=True)
class DocumentQuery:
    """ITI-67's filters within one patient; ``pairs`` are the decision's (publisher, category) pairs."""

    patient: uuid.UUID
    pairs: frozenset[tuple[str, str]]
    type_system: str | None = None
    type_code: str | None = None
    dates: tuple[tuple[str, datetime], ...] = ()
    count: int = 20
    offset: int = 0


_DATE_OPS = {"eq": "=", "ge": ">=", "le": "<=", "gt": ">", "lt": "<"}


def find_documents(conn: Conn, query: DocumentQuery) -> tuple[list[DocumentRow], int]:
    """The matching rows (newest first, one page) and the total, both counting only permitted pairs."""
    if not query.pairs:
        return [], 0
    publishers, categories = zip(*sorted(query.pairs), strict=True)
    where = ["patient_id = %s", "(publisher, category) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"]
    params: list[Any] = [query.patient, list(publishers), list(categories)]
    if query.type_code is not None:
        where.append("type_code = %s")
        params.append(query.type_code)
    if query.type_system is not None:
        where.append("type_system = %s")
        params.append(query.type_system)
    for op, value in query.dates:
        where.append(f"date {_DATE_OPS[op]} %s")
        params.append(value)
    clause = " AND ".join(where)
    total_row = conn.execute(f"SELECT count(*) FROM document WHERE {clause}", params).fetchone()  # noqa: S608 - fixed fragments
    total = int(total_row[0]) if total_row else 0
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {_DOC_COLUMNS} FROM document WHERE {clause} ORDER BY date DESC, id LIMIT %s OFFSET %s",  # noqa: S608
            [*params, query.count, query.offset],
        ).fetchall()
    return [DocumentRow(**r) for r in rows], total


# --------------------------------------------------------------------------- consents


@dataclass(frozen=True)
class ConsentRow:
    terms: ConsentTerms
    patient_id: uuid.UUID
    version: int
    recorded_by: str


def _consent(row: dict[str, Any]) -> ConsentRow:
    terms = ConsentTerms(
        id=str(row["id"]),
        status=ConsentStatus(row["status"]),
        permit=row["decision"] == "permit",
        actors=frozenset(row["actors"]),
        purposes=frozenset(row["purposes"]),
        categories=frozenset(row["categories"]),
        start=row["period_start"],
        end=row["period_end"],
    )
    return ConsentRow(terms=terms, patient_id=row["patient_id"], version=row["version"], recorded_by=row["recorded_by"])


def consents_of(conn: Conn, patient: uuid.UUID) -> list[ConsentTerms]:
    """Every consent of the patient, read now: a revocation counts from the next request on."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT * FROM consent WHERE patient_id = %s ORDER BY id", (patient,)).fetchall()
    return [_consent(r).terms for r in rows]


def consent(conn: Conn, consent_id: uuid.UUID, *, lock: bool = False) -> ConsentRow | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM consent WHERE id = %s FOR UPDATE" if lock else "SELECT * FROM consent WHERE id = %s",
            (consent_id,),
        ).fetchone()
    return _consent(row) if row else None


def _values(terms: ConsentTerms) -> tuple[Any, ...]:
    return (
        terms.status.value,
        "permit" if terms.permit else "deny",
        sorted(terms.actors),
        sorted(terms.purposes),
        sorted(terms.categories),
        terms.start,
        terms.end,
    )


def insert_consent(conn: Conn, terms: ConsentTerms, patient: uuid.UUID, recorded_by: str) -> None:
    conn.execute(
        "INSERT INTO consent (id, patient_id, status, decision, actors, purposes, categories, period_start, "
        "period_end, recorded_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (uuid.UUID(terms.id), patient, *_values(terms), recorded_by),
    )


def update_consent(conn: Conn, terms: ConsentTerms, expected_version: int | None) -> int:
    """Replace a consent's terms (same patient); 412 when ``expected_version`` is not the stored one."""
    current = consent(conn, uuid.UUID(terms.id), lock=True)
    assert current is not None
    if expected_version is not None and expected_version != current.version:
        raise precondition_failed(f"Consent/{terms.id} is at version {current.version}, not {expected_version}")
    conn.execute(
        "UPDATE consent SET status = %s, decision = %s, actors = %s, purposes = %s, categories = %s, "
        "period_start = %s, period_end = %s, version = version + 1, updated_at = now() WHERE id = %s",
        (*_values(terms), uuid.UUID(terms.id)),
    )
    return current.version + 1


# --------------------------------------------------------------------------- demographics and submission sets


def record_patient(conn: Conn, patient: uuid.UUID, publisher: str, record: str) -> None:
    """The publisher's newest Patient record for this patient (the name of an encrypted record, not its content)."""
    conn.execute(
        "INSERT INTO patient_record (patient_id, publisher, record) VALUES (%s, %s, %s) "
        "ON CONFLICT (patient_id, publisher) DO UPDATE SET record = excluded.record, updated_at = now()",
        (patient, publisher, record),
    )


def patient_records(conn: Conn, patient: uuid.UUID) -> list[tuple[str, str]]:
    """(publisher, record name) of every publisher's Patient record, newest first."""
    rows = conn.execute(
        "SELECT publisher, record FROM patient_record WHERE patient_id = %s ORDER BY updated_at DESC, publisher",
        (patient,),
    ).fetchall()
    return [(str(p), str(r)) for p, r in rows]


def insert_submission_set(
    conn: Conn, set_id: uuid.UUID, patient: uuid.UUID, publisher: str, documents: Sequence[uuid.UUID]
) -> None:
    conn.execute(
        "INSERT INTO submission_set (id, patient_id, publisher, documents) VALUES (%s, %s, %s, %s)",
        (set_id, patient, publisher, list(documents)),
    )


def submission_set(conn: Conn, set_id: uuid.UUID) -> tuple[uuid.UUID, str, list[uuid.UUID]] | None:
    """(patient, publisher, documents) of a SubmissionSet."""
    row = conn.execute(
        "SELECT patient_id, publisher, documents FROM submission_set WHERE id = %s", (set_id,)
    ).fetchone()
    return (row[0], str(row[1]), list(row[2])) if row else None


def documents(conn: Conn, ids: Sequence[uuid.UUID]) -> list[DocumentRow]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(f"SELECT {_DOC_COLUMNS} FROM document WHERE id = ANY(%s)", (list(ids),)).fetchall()  # noqa: S608
    return [DocumentRow(**r) for r in rows]
