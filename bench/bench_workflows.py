"""The clinical workflows: concurrent bookings of one schedule, and the recognition lookup on a large index.

Prints figures only; never passes or fails. Run: ``.venv/bin/python bench/bench_workflows.py``
(``--results 1000000`` for the large index; ``--slots``, ``--workers`` for the booking race).

It starts its own PostgreSQL and MinIO (a LocalCluster without Kubernetes or broker) and runs the
workflows' services in process on the real exchange index, record client and locked audit bucket, as
bench_exchange.py does. Left out, the same for every request: TokenReview and SubjectAccessReview, and
the recognition rule's read of the producers' Hospitals (answered here from a fixed table in process).

- bookings: one Schedule with S free Slots; W threads each try to book every Slot (W attempts per
  Slot, so every Slot is contested W ways), each attempt ``Appointments.book`` (validation, slot row
  lock, insert under the partial unique index, the encrypted Appointment record, the AuditEvent). It
  prints successful bookings/s, attempts/s, and the double bookings found in the table afterwards
  (must be 0), against, in the same run, the same race done as raw SQL (lock, INSERT, UPDATE).
- recognition: N exam results bulk-loaded (10 per patient, three publishers, five tests, issued over
  the last year), then the lookup's index query plus the Consortium's rule for random patients, p50/p95;
  and the whole ``$recognised`` lookup (decision, consents, query, rule, reports decrypted, audit) for a
  patient with published reports; against a primary-key SELECT of one row in the same run.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from medcloud.models.consortium import ConsortiumSpec
from medcloud.models.hospital import HospitalSpec
from medcloud_exchange import index
from medcloud_exchange.cluster import Cluster
from medcloud_exchange.outcomes import FhirError
from medcloud_exchange.service import Context
from medcloud_exchange.workflows.appointments import Appointments
from medcloud_exchange.workflows.common import Workflows
from medcloud_exchange.workflows.exam_results import ExamResults, candidates
from medcloud_exchange.workflows.recognition import Producer, longest_window, recognised
from medcloud_exchange.workflows.requests import Requests

# The exchange benchmark's in-process stores and helpers, one copy (run as a script, the repo is not on the path).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_exchange import _context, _percentile, in_process_exchange

TESTS = ("58410-2", "24627-2", "2345-7", "718-7", "2160-0")
PUBLISHERS = ("county", "village", "city")
TIERS = {"county": "county", "village": "village", "city": "city"}


class FixedHospitals(Cluster):
    """The producers' Hospitals from a table: the one API server read this benchmark leaves out."""

    def hospital(self, name: str) -> HospitalSpec | None:
        return HospitalSpec.model_validate(
            {"displayName": name, "institutionCode": "BENCH0001", "tier": TIERS[name], "examAccredited": True}
        )


def _spec() -> ConsortiumSpec:
    return ConsortiumSpec.model_validate(
        {
            "displayName": "Bench",
            "leadHospital": "city",
            "members": list(PUBLISHERS),
            "consentRequired": False,
            "sharing": [
                {"category": c, "from": ["*"], "to": ["*"], "requireConsent": False} for c in ("emr", "exam-results")
            ],
            "examRecognition": {
                "producerTiers": ["city", "county"],
                "windows": [
                    {"test": "58410-2", "days": 7},
                    {"test": "24627-2", "days": 180},
                    {"category": "LAB", "days": 30},
                ],
            },
        }
    )


def _percentiles(values: list[float]) -> str:
    return f"p50 {_percentile(values, 0.5) * 1000:.2f} ms, p95 {_percentile(values, 0.95) * 1000:.2f} ms"


def _patients(dsn: str, count: int) -> list[uuid.UUID]:
    patients = [uuid.uuid4() for _ in range(count)]
    with psycopg.connect(dsn) as conn, conn.transaction(), conn.cursor().copy("COPY patient (id) FROM STDIN") as copy:
        for patient in patients:
            copy.write_row((patient,))
    return patients


def _schedule(dsn: str, owner: str, slots: int) -> list[uuid.UUID]:
    schedule = uuid.uuid4()
    ids = [uuid.uuid4() for _ in range(slots)]
    start = datetime.now(UTC) + timedelta(days=1)
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("INSERT INTO schedule (id, owner) VALUES (%s, %s)", (schedule, owner))
        for n, slot in enumerate(ids):
            conn.execute(
                "INSERT INTO slot (id, schedule_id, owner, status, starts, ends) VALUES (%s, %s, %s, 'free', %s, %s)",
                (slot, schedule, owner, start + timedelta(minutes=15 * n), start + timedelta(minutes=15 * n + 15)),
            )
    return ids


def _race(slots: list[uuid.UUID], workers: int, attempt: Any) -> tuple[int, int, float]:
    """Every worker tries every slot (in its own shuffled order); returns (booked, attempts, seconds)."""
    booked = 0
    lock = threading.Lock()

    def run(seed: int) -> None:
        nonlocal booked
        order = list(slots)
        random.Random(seed).shuffle(order)
        for slot in order:
            if attempt(slot):
                with lock:
                    booked += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, range(workers)))
    return booked, len(slots) * workers, time.perf_counter() - started


def bench_bookings(appointments: Appointments, ctx: Context, dsn: str, slots: int, workers: int) -> None:
    patients = _patients(dsn, workers)

    def raw(slot: uuid.UUID) -> bool:
        # The same connection pool as the exchange's: the baseline pays no connection set-up either.
        with appointments.wf.db.transaction() as conn:
            state = conn.execute("SELECT status FROM slot WHERE id = %s FOR UPDATE", (slot,)).fetchone()
            if state is None or state[0] != "free":
                return False
            conn.execute(
                "INSERT INTO appointment (id, slot_id, patient_id, booked_by, host, status, starts, ends, written_by) "
                "VALUES (%s, %s, %s, 'city', 'county', 'booked', now(), now(), 'city')",
                (uuid.uuid4(), slot, patients[0]),
            )
            conn.execute("UPDATE slot SET status = 'busy' WHERE id = %s", (slot,))
            return True

    def exchange(slot: uuid.UUID) -> bool:
        patient = random.choice(patients)
        body = {
            "resourceType": "Appointment",
            "status": "booked",
            "slot": [{"reference": f"Slot/{slot}"}],
            "participant": [{"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}],
        }
        try:
            appointments.book(ctx, body)
        except FhirError as exc:
            if exc.status != 409:
                raise
            return False
        return True

    raw_booked, raw_attempts, raw_seconds = _race(_schedule(dsn, "county", slots), workers, raw)
    ours = _schedule(dsn, "county", slots)
    booked, attempts, seconds = _race(ours, workers, exchange)
    with psycopg.connect(dsn) as conn:
        doubles = conn.execute(
            "SELECT count(*) FROM (SELECT slot_id FROM appointment WHERE status = 'booked' AND slot_id = ANY(%s) "
            "GROUP BY slot_id HAVING count(*) > 1) d",
            (ours,),
        ).fetchone()
    print(f"bookings: one schedule, {slots} slots, {workers} threads each trying every slot ({attempts} attempts)")
    raw_rate, raw_attempt_rate = raw_booked / raw_seconds, raw_attempts / raw_seconds
    print(f"  raw SQL (lock, INSERT, UPDATE):  {raw_rate:8.1f} bookings/s, {raw_attempt_rate:8.1f} attempts/s")
    print(
        f"  Appointments.book:               {booked / seconds:8.1f} bookings/s, {attempts / seconds:8.1f} attempts/s"
    )
    print(f"  ratio raw / exchange (bookings/s): {raw_booked / raw_seconds / (booked / seconds):.1f}x")
    print(f"  slots booked {booked} of {slots}; double bookings in the table: {doubles[0] if doubles else '?'}")


def bulk_results(dsn: str, results: int) -> list[uuid.UUID]:
    patients = _patients(dsn, max(1, results // 10))
    now = datetime.now(UTC)
    with (
        psycopg.connect(dsn) as conn,
        conn.transaction(),
        conn.cursor().copy(
            "COPY exam_result (id, patient_id, publisher, test_system, test_code, categories, issued) FROM STDIN"
        ) as copy,
    ):
        for n in range(results):
            copy.write_row(
                (
                    uuid.uuid4(),
                    patients[n // 10],
                    PUBLISHERS[n % 3],
                    "http://loinc.org",
                    TESTS[n % len(TESTS)],
                    ["RAD"] if TESTS[n % len(TESTS)] == "24627-2" else ["LAB"],
                    now - timedelta(hours=(n * 7919) % (365 * 24)),
                )
            )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE exam_result")
    return patients


def bench_recognition(exams: ExamResults, ctx: Context, dsn: str, results: int, samples: int) -> None:
    started = time.perf_counter()
    patients = bulk_results(dsn, results)
    loaded = time.perf_counter() - started
    rule = ctx.spec.exam_recognition
    producers = {p: Producer(FixedHospitals.hospital(None, p).tier, True) for p in PUBLISHERS}  # type: ignore[arg-type, union-attr]
    rng = random.Random(7)
    raw, lookups = [], []
    with psycopg.connect(dsn) as conn:
        for _ in range(samples):
            patient, test = rng.choice(patients), rng.choice(TESTS)
            t0 = time.perf_counter()
            conn.execute("SELECT 1 FROM patient WHERE id = %s", (patient,)).fetchone()
            t1 = time.perf_counter()
            now = datetime.now(UTC)
            bound = longest_window(rule, test)
            assert bound is not None
            rows = candidates(conn, patient, test, now - bound, list(PUBLISHERS))
            recognised(rule, [r.candidate() for r in rows], producers, now)
            t2 = time.perf_counter()
            raw.append(t1 - t0)
            lookups.append(t2 - t1)
    # The whole $recognised path for a patient whose reports were really published (and are decrypted).
    (published,) = _patients(dsn, 1)
    for days in (1, 3):
        report = {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
            "subject": {"reference": f"Patient/{published}"},
            "issued": (datetime.now(UTC) - timedelta(days=days)).isoformat(),
            "performer": [{"reference": "Organization/county"}],
            "conclusion": "CBC within normal limits",
        }
        exams.publish(_context("county", ctx.spec), report)
    whole = []
    for _ in range(max(1, samples // 5)):
        t0 = time.perf_counter()
        exams.lookup(ctx, published, "58410-2")
        whole.append(time.perf_counter() - t0)
    print(f"recognition: {results} exam results indexed ({loaded:.0f} s to load), {samples} lookups")
    print(f"  primary-key SELECT (baseline):       {_percentiles(raw)}")
    print(f"  index query + Consortium rule:       {_percentiles(lookups)}")
    print(f"  ratio p95 lookup / p95 baseline:     {_percentile(lookups, 0.95) / _percentile(raw, 0.95):.1f}x")
    print(f"  whole $recognised (2 reports):       {_percentiles(whole)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--slots", type=int, default=200, help="slots of the contested schedule")
    parser.add_argument("--workers", type=int, default=8, help="threads booking concurrently")
    parser.add_argument("--results", type=int, default=1_000_000, help="exam results in the index")
    parser.add_argument("--samples", type=int, default=1000, help="recognition lookups to time")
    args = parser.parse_args()
    with in_process_exchange("bench-workflows-", FixedHospitals, args.workers + 2) as (exchange, _minio, _records, dsn):
        with exchange.db.connection() as conn:  # migrations
            index.patient_exists(conn, uuid.uuid4())
        workflows = Workflows(exchange)
        spec = _spec()
        print("MedCloud workflows benchmark (PostgreSQL and MinIO on loopback, this machine)")
        bench_bookings(Appointments(workflows), _context("city", spec), dsn, args.slots, args.workers)
        exams = ExamResults(workflows, Requests(workflows))
        bench_recognition(exams, _context("village", spec), dsn, args.results, args.samples)


if __name__ == "__main__":
    main()
