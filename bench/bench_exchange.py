"""The exchange against its raw parts: publish throughput, ITI-67 search latency, consent decision cost.

Prints figures only; never passes or fails. Run: ``.venv/bin/python bench/bench_exchange.py``
(``--documents 1000000`` for the large index).

It starts its own PostgreSQL and MinIO (a LocalCluster without Kubernetes or broker). The
exchange's service layer runs in process with the real index, the real record client
(encrypting into a RecordStore-like locked bucket; data keys from an in-process ring, since
the key service is asked once per process and version) and the real locked audit bucket.
What is left out is only the per-request TokenReview and SubjectAccessReview (two API server
round trips, the same for every request).

- publish: ``Exchange.publish`` of a 4 KiB document (validation, patient index, two
  encrypted puts, an AuditEvent, one transaction) against, in the same run, (a) a raw
  INSERT of the index row plus one raw put of the same bytes, and (b) the INSERT plus three
  raw puts (as many objects as the exchange writes). Ratio = raw time / exchange time.
- ITI-65: ``Exchange.provide`` of a Provide Document Bundle (one 4 KiB document, its Binary, the
  SubmissionSet and a Patient: four records, five index rows, one audit record) against a raw
  INSERT plus five raw puts (as many objects), as a ratio;
- search: the index at N documents (bulk-loaded: 10 per patient over three publishers and
  every category), ``find_documents`` restricted to a real decision's pairs, p50/p95 over
  random patients; and the whole ITI-67 path (decision, its audit, the search, each
  DocumentReference decrypted from the publisher's store, the search's audit) for a patient
  with 10 published documents.
- decision: ``decide`` alone for a consortium of 100 members and 32 rules with 5 consents,
  and reading the patient's consents from PostgreSQL, per request.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from kubernetes import client
from minio import Minio
from minio.commonconfig import COMPLIANCE
from minio.objectlockconfig import DAYS, ObjectLockConfig

from medcloud.models.consortium import ConsortiumSpec
from medcloud.records.client import InMemoryKeyProvider, RecordClient
from medcloud.records.keys import KeyRing, generate_kek
from medcloud_cli.demo import fhir
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster
from medcloud_exchange import index
from medcloud_exchange.audit import AuditStore, Requester
from medcloud_exchange.cluster import Cluster
from medcloud_exchange.database import Database
from medcloud_exchange.decision import CATEGORIES, AccessRequest, ConsentStatus, ConsentTerms, Purpose, decide
from medcloud_exchange.service import Context, Exchange, PatientSelector, SearchFilters
from medcloud_exchange.settings import ExchangeSettings
from medcloud_exchange.stores import PublisherStores

RESIDENT_ID = "urn:oid:2.16.156.10011.1.2"
DOCUMENT = os.urandom(4096)


class LocalStores(PublisherStores):
    """Each publisher's records in one locked bucket, keys from a ring in this process."""

    def __init__(self, minio: Minio, bucket: str) -> None:
        self._by_hospital: dict[str, RecordClient] = {}
        self._minio, self._bucket = minio, bucket

    def client(self, hospital: str) -> RecordClient:
        if hospital not in self._by_hospital:
            ring = KeyRing.create(hospital=hospital, store="emr", kek=generate_kek())
            self._by_hospital[hospital] = RecordClient(self._minio, self._bucket, InMemoryKeyProvider(ring))
        return self._by_hospital[hospital]


def _locked_bucket(minio: Minio, name: str) -> str:
    minio.make_bucket(name, object_lock=True)
    minio.set_object_lock_config(name, ObjectLockConfig(COMPLIANCE, 1, DAYS))
    return name


def _spec(members: int = 3) -> ConsortiumSpec:
    names = ["city", "county", "village", *[f"clinic-{i}" for i in range(members - 3)]]
    rules = [{"category": c, "from": ["county", "village"], "to": ["city"]} for c in CATEGORIES]
    rules += [{"category": "emr", "from": [n], "to": ["*"]} for n in names[3 : 3 + 26]]
    return ConsortiumSpec.model_validate(
        {"displayName": "Bench", "leadHospital": "city", "members": names, "sharing": rules[:32]}
    )


def _context(hospital: str, spec: ConsortiumSpec) -> Context:
    requester = Requester(f"system:serviceaccount:hospital-{hospital}:emr", hospital, "Practitioner/b", "TREAT")
    return Context(requester=requester, spec=spec, purpose=Purpose.TREAT)


def _document(patient_value: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5"}]},
        "category": [{"coding": [{"system": "https://medcloud.io/fhir/CodeSystem/sharing-category", "code": "emr"}]}],
        "date": "2026-11-30T10:00:00+08:00",
        "subject": {"identifier": {"system": RESIDENT_ID, "value": patient_value}},
        "content": [{"attachment": {"contentType": "application/pdf", "data": base64.b64encode(DOCUMENT).decode()}}],
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _timed(run: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        run()
    return time.perf_counter() - start


def _raw_publish(shared: psycopg.Connection[Any], minio: Minio, bucket: str, bodies: list[bytes]) -> None:
    """The baseline: one index row INSERTed and the bytes put raw, in one transaction."""
    name = uuid.uuid4()
    with shared.transaction():
        shared.execute(
            "INSERT INTO raw_document (id, patient_id, publisher, store, category, type_system, "
            "type_code, date, content_type, size) VALUES (%s, %s, 'county', 'emr', 'emr', "
            "'http://loinc.org', '18842-5', now(), 'application/pdf', %s)",
            (name, uuid.uuid4(), len(DOCUMENT)),
        )
        for i, body in enumerate(bodies):
            minio.put_object(bucket, f"raw/{name}/{i}", io.BytesIO(body), len(body))


def bench_publish(exchange: Exchange, minio: Minio, bucket: str, dsn: str, count: int) -> None:
    spec = _spec()
    ctx = _context("county", spec)
    with exchange.db.connection():
        pass  # the exchange's schema, migrated on first use
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS raw_document (LIKE document INCLUDING ALL)")
        conn.execute("ALTER TABLE raw_document DROP CONSTRAINT IF EXISTS raw_document_patient_id_fkey")
    metadata = json.dumps(_document("x")).encode()

    # The exchange draws from a pool: the raw baseline keeps one connection open too.
    with psycopg.connect(dsn) as shared:

        def raw_pooled(puts: int) -> Callable[[], None]:
            return lambda: _raw_publish(shared, minio, bucket, [DOCUMENT, metadata, metadata][:puts])

        counter = iter(range(10**9))
        publish = lambda: exchange.publish(ctx, _document(f"bench-{next(counter)}"))  # noqa: E731
        for run in (publish, raw_pooled(1), raw_pooled(3)):
            _timed(run, 10)  # warm up connections, keys, caches
        rounds = []
        for _ in range(3):
            t_exchange = _timed(publish, count)
            t_raw1 = _timed(raw_pooled(1), count)
            t_raw3 = _timed(raw_pooled(3), count)
            rounds.append((t_exchange, t_raw1, t_raw3))
    exchange_s, raw1_s, raw3_s = (statistics.median(r[i] for r in rounds) for i in range(3))
    print(f"\npublish, 4 KiB documents, {count} per round, median of 3 rounds")
    print(f"  exchange publish:              {count / exchange_s:8.1f} /s  ({exchange_s / count * 1000:6.2f} ms each)")
    print(f"  raw INSERT + 1 put:            {count / raw1_s:8.1f} /s  ({raw1_s / count * 1000:6.2f} ms each)")
    print(f"  raw INSERT + 3 puts:           {count / raw3_s:8.1f} /s  ({raw3_s / count * 1000:6.2f} ms each)")
    print(f"  ratio exchange/raw (1 put):    {raw1_s / exchange_s:8.2f}")
    print(f"  ratio exchange/raw (3 puts):   {raw3_s / exchange_s:8.2f}")


def _provide_bundle(patient_value: str) -> dict[str, Any]:
    """The NIST MHD test Bundle (tests/data/exchange/SOURCES.md): SubmissionSet, DocumentReference, a 4 KiB
    Binary, and a Patient entry carrying the identifier."""
    patient = {"resourceType": "Patient", "identifier": [{"system": RESIDENT_ID, "value": patient_value}]}
    return fhir.provide_bundle("emr", DOCUMENT, patient, content_type="application/pdf")


def bench_provide(exchange: Exchange, minio: Minio, bucket: str, dsn: str, count: int) -> None:
    """ITI-65 (one document, its Binary, the SubmissionSet and the Patient) against a raw INSERT plus raw
    puts of what it keeps: the content, the DocumentReference, the SubmissionSet, the Patient, and one
    more for its audit record (5 puts, as many objects as the exchange writes)."""
    ctx = _context("county", _spec())
    sample = _provide_bundle("x")
    kept = [DOCUMENT]
    kept += [json.dumps(e["resource"]).encode() for e in sample["entry"] if e["resource"]["resourceType"] != "Binary"]
    kept.append(kept[1])  # as many objects as the exchange writes: the audit record too
    with psycopg.connect(dsn) as shared:

        def raw() -> None:
            _raw_publish(shared, minio, bucket, kept)

        counter = iter(range(10**9))
        provide = lambda: exchange.provide(ctx, _provide_bundle(f"bundle-{next(counter)}"))  # noqa: E731
        for run in (provide, raw):
            _timed(run, 10)
        rounds = [(_timed(provide, count), _timed(raw, count)) for _ in range(3)]
    exchange_s, raw_s = (statistics.median(r[i] for r in rounds) for i in range(2))
    print(f"\nITI-65 Provide Document Bundle (1 document of 4 KiB, Binary, SubmissionSet, Patient), {count} per round")
    print(f"  exchange ITI-65:               {count / exchange_s:8.1f} /s  ({exchange_s / count * 1000:6.2f} ms each)")
    print(f"  raw INSERT + {len(kept)} puts:           {count / raw_s:8.1f} /s  ({raw_s / count * 1000:6.2f} ms each)")
    print(f"  ratio exchange/raw:            {raw_s / exchange_s:8.2f}")


def bulk_index(dsn: str, documents: int) -> list[uuid.UUID]:
    """``documents`` index rows, 10 per patient, over three publishers and every category (COPY)."""
    patients = [uuid.uuid4() for _ in range(max(1, documents // 10))]
    publishers = ("county", "village", "city")
    start = datetime(2020, 1, 1, tzinfo=UTC)
    with psycopg.connect(dsn) as conn, conn.transaction():
        with conn.cursor().copy("COPY patient (id) FROM STDIN") as copy:
            for patient in patients:
                copy.write_row((patient,))
        with conn.cursor().copy(
            "COPY document (id, patient_id, publisher, store, category, type_system, type_code, date, "
            "content_type, size) FROM STDIN"
        ) as copy:
            for n in range(documents):
                copy.write_row(
                    (
                        uuid.uuid4(),
                        patients[n // 10],
                        publishers[n % 3],
                        "emr",
                        CATEGORIES[n % len(CATEGORIES)],
                        "http://loinc.org",
                        "18842-5",
                        start + timedelta(hours=n),
                        "application/pdf",
                        4096,
                    )
                )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE document")
    return patients


def bench_search(exchange: Exchange, dsn: str, documents: int, samples: int) -> None:
    started = time.perf_counter()
    patients = bulk_index(dsn, documents)
    loaded = time.perf_counter() - started
    spec = _spec()
    decision = decide(spec, AccessRequest("city", Purpose.TREAT), [], datetime.now(UTC))
    sql: list[float] = []
    with psycopg.connect(dsn) as conn:
        for _ in range(samples):
            query = index.DocumentQuery(patient=random.choice(patients), pairs=decision.permitted | decision.refused)
            t0 = time.perf_counter()
            rows, total = index.find_documents(conn, query)
            sql.append(time.perf_counter() - t0)
            assert total >= len(rows)
    # The whole ITI-67 path for a patient with 10 published documents.
    ctx_county = _context("county", spec)
    for _ in range(10):
        exchange.publish(ctx_county, _document("search-patient"))
    ctx_city = _context("city", spec)
    with exchange.db.transaction() as conn:
        patient = index.patient_for(conn, exchange.settings.blind_key(), [(RESIDENT_ID, "search-patient")])
        assert patient is not None
        index.insert_consent(conn, ConsentTerms(str(uuid.uuid4()), ConsentStatus.ACTIVE, True), patient, "county")
    full: list[float] = []
    for _ in range(max(20, samples // 10)):
        t0 = time.perf_counter()
        _found, total = exchange.find(
            ctx_city, PatientSelector(identifier=(RESIDENT_ID, "search-patient")), SearchFilters(), "category=emr"
        )
        full.append(time.perf_counter() - t0)
        assert total == 10, total
    print(f"\nsearch, index of {documents:,} documents ({len(patients):,} patients; loaded in {loaded:.1f} s)")
    for label, values in (("index query (SQL only)", sql), ("whole ITI-67, 10 results", full)):
        p50, p95 = _percentile(values, 0.5) * 1000, _percentile(values, 0.95) * 1000
        print(f"  {label + ':':30} p50 {p50:6.2f} ms   p95 {p95:6.2f} ms")
    print("  (whole ITI-67: the decision and its audit put, the query, 10 decrypted reads, the search's audit put)")


def bench_decision(exchange: Exchange, samples: int) -> None:
    spec = _spec(100)
    now = datetime.now(UTC)
    consents = [
        ConsentTerms(f"c{i}", ConsentStatus.ACTIVE, i != 4, actors=frozenset({"city"}), purposes=frozenset({"TREAT"}))
        for i in range(5)
    ]
    request = AccessRequest("city", Purpose.TREAT)
    pure = _timed(lambda: decide(spec, request, consents, now), samples) / samples
    patient = uuid.uuid4()
    with exchange.db.transaction() as conn:
        conn.execute("INSERT INTO patient (id) VALUES (%s)", (patient,))
        for terms in consents:
            index.insert_consent(conn, ConsentTerms(**{**terms.__dict__, "id": str(uuid.uuid4())}), patient, "county")
    with exchange.db.connection() as conn:
        read = _timed(lambda: index.consents_of(conn, patient), samples) / samples
    print(f"\nconsent decision, 100 members, {len(spec.sharing)} rules, 5 consents, {samples} requests")
    print(f"  decide() alone:                {pure * 1e6:8.1f} µs per request")
    print(f"  reading the consents (SQL):    {read * 1e6:8.1f} µs per request")


@contextlib.contextmanager
def in_process_exchange(
    prefix: str, cluster: type[Cluster] = Cluster, pool_size: int = 8
) -> Iterator[tuple[Exchange, Minio, str, str]]:
    """PostgreSQL and MinIO of their own, and the exchange's service layer on them, in process:
    (exchange, root MinIO client, the records bucket, the database's DSN)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as state:
        servers = LocalCluster(Path(state), ClusterOptions(with_kubernetes=False, with_broker=False))
        servers.start()
        try:
            state_ = servers.state
            assert state_ is not None
            assert state_.minio is not None
            assert state_.postgres is not None
            info, pg = state_.minio, state_.postgres
            minio = Minio(info.endpoint, access_key=info.access_key, secret_key=info.secret_key, secure=False)
            records = _locked_bucket(minio, "bench-records")
            audit = AuditStore(minio, _locked_bucket(minio, "bench-audit"))
            settings = ExchangeSettings(
                consortium="bench",
                database_url=pg.dsn,
                blind_index_key=base64.b64encode(os.urandom(32)).decode(),
                audit_endpoint=info.endpoint,
                audit_access_key=info.access_key,
                audit_secret_key=info.secret_key,
                audit_bucket="bench-audit",
                key_service_url="http://127.0.0.1:1",
                key_service_token_file=Path(state) / "unused",
            )
            database = Database(pg.dsn, timeout=30, max_size=pool_size)
            database.open()
            # No API server here: the Cluster is never asked (no TokenReview, and no break-glass Event).
            exchange = Exchange(
                settings, database, cluster(client.ApiClient(), settings), LocalStores(minio, records), audit
            )
            try:
                yield exchange, minio, records, pg.dsn
            finally:
                database.close()
        finally:
            servers.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--publishes", type=int, default=200, help="publishes per round")
    parser.add_argument("--documents", type=int, default=100_000, help="documents in the search index")
    parser.add_argument("--samples", type=int, default=500, help="searches and decisions to time")
    args = parser.parse_args()
    with in_process_exchange("bench-exchange-") as (exchange, minio, records, dsn):
        print("MedCloud exchange benchmark (PostgreSQL 15 and MinIO on loopback, this machine)")
        bench_publish(exchange, minio, records, dsn, args.publishes)
        bench_provide(exchange, minio, records, dsn, args.publishes)
        bench_search(exchange, dsn, args.documents, args.samples)
        bench_decision(exchange, args.samples * 10)


if __name__ == "__main__":
    main()
