# ruff: noqa: S608  (the SQL is this file's own text and a temporary directory)
"""Analytics figures: an indicator over N Observations in Parquet (DuckDB) against the same query on NDJSON,
and the de-identifier's cost per resource against reading the same resource raw.

Prints figures only; never passes or fails. Run: ``.venv/bin/python bench/bench_analytics.py``
(``--observations 10000000`` for the issue's size; default 1,000,000 to stay within minutes and a few GB).

- indicator: N blood-pressure Observations (one per reading: patient pseudonym, institution, month,
  systolic, diastolic) made by DuckDB, written (a) as the lake writes them, Parquet partitioned by
  month, with the flat columns, and (b) as uncompressed NDJSON of the FHIR Observations the export
  carries. The query is the monitoring indicator's blood-pressure part (last reading per patient and
  month, share under 140/90 per institution and month). Ratio = NDJSON time / Parquet time; both
  answers are checked equal.
- de-identify: ``Deidentifier.resource`` on the IHE blood-pressure example against ``json.loads`` and
  ``json.dumps`` of the same line (what streaming a raw record through costs without it).
- export: the device readings of a generated month (tests/consortium_month.py, ``--patients`` per member
  of the example consortium's five, ``--readings`` each), made Observations by the gateway's own
  normaliser and stored encrypted as the gateway batches them (``--batch`` readings an NDJSON record)
  into a real MinIO (a LocalCluster of MinIO alone; data keys from an in-process ring, as
  bench_exchange.py does). Then, in the same run, (a) the export's reader and NDJSON lines
  (``bulk.devices.read`` + ``bulk.service.device_lines``: list, get and decrypt each record, each reading
  scoped, de-identified, serialised) against (b) reading the same encrypted records raw
  (``medcloud.records.batches.read_resources``: list, get, decrypt, parse). Ratio = export resources/s
  over raw resources/s. Left out: the HTTP response and the kick-off's PostgreSQL (once per export).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
from minio import Minio

from medcloud.models.deidentification import DeidentificationPolicy
from medcloud_exchange.bulk.deidentify import Deidentifier

# The month's generator is the tests' (tests/consortium_month.py): the same month at a larger scale.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).parents[1] / "tests" / "data" / "analytics"

_READINGS = """
    SELECT 'Observation' AS resource_type, 'o' || i AS id, 'p' || (i % {patients}) AS patient,
           'member-' || (i % 40) AS from_org, '2026-' || lpad(CAST(1 + i % 12 AS VARCHAR), 2, '0') AS month,
           100 + (hash(i) % 80) AS systolic, 60 + (hash(i * 7) % 50) AS diastolic,
           (i // {patients}) AS seq
    FROM range({n}) t(i)"""

_FHIR = """
    SELECT json_object('resourceType', 'Observation', 'id', id, 'status', 'final',
        'code', json_object('coding', [json_object('system', 'http://loinc.org', 'code', '85354-9')]),
        'subject', json_object('reference', 'Patient/' || patient),
        'performer', [json_object('reference', 'Organization/' || from_org)],
        'effectiveDateTime', month || '-01T00:00:' || lpad(CAST(seq % 60 AS VARCHAR), 2, '0') || 'Z',
        'component', [
            json_object('code', json_object('coding', [json_object('system', 'http://loinc.org', 'code', '8480-6')]),
                        'valueQuantity', json_object('value', systolic, 'unit', 'mm[Hg]', 'code', 'mm[Hg]')),
            json_object('code', json_object('coding', [json_object('system', 'http://loinc.org', 'code', '8462-4')]),
                        'valueQuantity', json_object('value', diastolic, 'unit', 'mm[Hg]', 'code', 'mm[Hg]'))])
        AS resource
    FROM readings"""

_SHARE = """
    SELECT institution, month, count(*) AS patients,
           round(count(*) FILTER (WHERE s < 140 AND d < 90) / count(*), 4) AS controlled
    FROM (SELECT institution, month, patient, arg_max(systolic, taken) AS s, arg_max(diastolic, taken) AS d
          FROM ({source}) GROUP BY ALL)
    GROUP BY ALL ORDER BY ALL"""

_FROM_PARQUET = """
    SELECT from_org AS institution, month, patient, systolic, diastolic, seq AS taken
    FROM read_parquet('{path}/*/*.parquet', hive_partitioning = true)"""

_FROM_NDJSON = """
    SELECT json_extract_string(json, '$.performer[0].reference')[14:] AS institution,
           json_extract_string(json, '$.effectiveDateTime')[1:7] AS month,
           json_extract_string(json, '$.subject.reference')[9:] AS patient,
           CAST(json_extract(json, '$.component[0].valueQuantity.value') AS DOUBLE) AS systolic,
           CAST(json_extract(json, '$.component[1].valueQuantity.value') AS DOUBLE) AS diastolic,
           json_extract_string(json, '$.effectiveDateTime') AS taken
    FROM read_ndjson_objects('{path}')"""


def _timed(conn: duckdb.DuckDBPyConnection, sql: str) -> tuple[float, list[tuple[object, ...]]]:
    start = time.perf_counter()
    rows = conn.execute(sql).fetchall()
    return time.perf_counter() - start, rows


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def indicator(n: int, folder: Path) -> None:
    conn = duckdb.connect(config={"threads": 2})
    patients = max(1, n // 20)
    start = time.perf_counter()
    conn.execute(f"CREATE TABLE readings AS {_READINGS.format(n=n, patients=patients)}")
    parquet, ndjson = folder / "lake", folder / "observations.ndjson"
    conn.execute(
        f"COPY (SELECT * EXCLUDE (resource_type) FROM readings) TO '{parquet}' "
        "(FORMAT parquet, PARTITION_BY (month), COMPRESSION zstd)"
    )
    # One JSON document per line, nothing around it (COPY ... FORMAT json would wrap it in a column object):
    # a CSV of one column whose quote and delimiter characters never occur in JSON text.
    conn.execute(
        f"COPY ({_FHIR}) TO '{ndjson}' (FORMAT csv, HEADER false, DELIMITER '\x01', QUOTE '\x02', ESCAPE '\x02')"
    )
    conn.execute("DROP TABLE readings")
    made = time.perf_counter() - start
    print(
        f"indicator over {n:,} Observations ({patients:,} patients, 40 institutions, 12 months); made in {made:.1f} s"
    )
    print(f"  sizes: Parquet {_size(parquet) / 1e6:,.0f} MB, NDJSON {_size(ndjson) / 1e6:,.0f} MB")
    # The same ordering key in both: NDJSON's effectiveDateTime sorts as seq does within a month.
    p_time, p_rows = _timed(conn, _SHARE.format(source=_FROM_PARQUET.format(path=parquet)))
    j_time, j_rows = _timed(conn, _SHARE.format(source=_FROM_NDJSON.format(path=ndjson)))
    same = [r[:3] for r in p_rows] == [r[:3] for r in j_rows]
    print(
        f"  DuckDB on Parquet: {p_time:.2f} s; on NDJSON: {j_time:.2f} s; ratio NDJSON/Parquet {j_time / p_time:.1f}x"
    )
    print(f"  {len(p_rows)} cells; the two answers' cells and patient counts equal: {same}")


def deidentify(count: int) -> None:
    line = (DATA / "observation-bloodpressure.json").read_text()
    policy = DeidentificationPolicy.model_validate({"purposes": [{"name": "bench"}]})
    deid = Deidentifier.for_purpose(policy, b"k" * 32, "bench", date(2026, 12, 2))
    start = time.perf_counter()
    for _ in range(count):
        json.dumps(json.loads(line))
    raw = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(count):
        json.dumps(deid.resource(json.loads(line), patient=f"p{i}"))
    clean = time.perf_counter() - start
    print(
        f"de-identify {count:,} blood pressures: raw parse+dump {count / raw:,.0f}/s, "
        f"de-identified {count / clean:,.0f}/s"
    )
    print(f"  ratio de-identified/raw throughput {raw / clean:.2f} (the de-identifier's share of a streamed line)")


def _month_observations(patients: int, readings: int) -> list[dict[str, object]]:
    """A generated month's device readings as the gateway's Observations (its normaliser, its ids)."""
    from medcloud_gateway.normalize import to_observation
    from medcloud_gateway.readings import parse_reading
    from tests.consortium_month import Scale, plan, reading_json

    tiers = {"city-general": "city", "county-people": "county", "township-maple": "township"}
    tiers |= {"community-eastgate": "community", "village-willow": "village"}
    month = plan(tiers, Scale(patients_per_member=patients, readings_per_patient=readings), datetime.now(UTC))
    return [to_observation(parse_reading(reading_json(r))) for r in month.readings]


def export(patients: int, readings: int, batch: int) -> None:
    from medcloud.records.batches import NDJSON_CONTENT_TYPE, Batch, read_resources
    from medcloud.records.client import InMemoryKeyProvider, RecordClient
    from medcloud.records.keys import KeyRing, generate_kek
    from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster
    from medcloud_exchange.bulk.devices import OBSERVATION, read
    from medcloud_exchange.bulk.service import device_lines

    observations = _month_observations(patients, readings)
    policy = DeidentificationPolicy.model_validate({"purposes": [{"name": "bench"}]})
    deid = Deidentifier.for_purpose(policy, b"k" * 32, "bench", date.today())
    with tempfile.TemporaryDirectory(prefix="bench-export-") as state:
        servers = LocalCluster(Path(state), ClusterOptions(with_kubernetes=False, with_broker=False))
        servers.start()
        try:
            assert servers.state is not None
            assert servers.state.minio is not None
            info = servers.state.minio
            minio = Minio(info.endpoint, access_key=info.access_key, secret_key=info.secret_key, secure=False)
            minio.make_bucket("bench-devices")
            ring = KeyRing.create(hospital="township-maple", store="device-data", kek=generate_kek())
            store = RecordClient(minio, "bench-devices", InMemoryKeyProvider(ring))
            start = time.perf_counter()
            # As the gateway stores them (docs/gateway.md): one encrypted NDJSON record per batch.
            for i in range(0, len(observations), batch):
                made = Batch(observations[i : i + batch])
                store.put(made.name, made.body, content_type=NDJSON_CONTENT_TYPE)
            stored = time.perf_counter() - start
            print(
                f"export of {len(observations):,} device Observations ({patients} patients x 5 members, "
                f"{readings} readings each, {batch} a record); stored in {stored:.1f} s"
            )
            start = time.perf_counter()
            raw = sum(1 for _ in read_resources(store, OBSERVATION))
            raw_time = time.perf_counter() - start
            until = datetime.now(UTC)
            start = time.perf_counter()
            lines = sum(1 for _ in device_lines(read([("township-maple", store)], until), deid))
            export_time = time.perf_counter() - start
            assert lines == raw == len(observations), (lines, raw, len(observations))
            raw_rate, export_rate = raw / raw_time, lines / export_time
            print(f"  raw read (list, get, decrypt, parse): {raw_rate:,.0f} resources/s")
            print(f"  $export reader + NDJSON lines:        {export_rate:,.0f} resources/s")
            print(f"  ratio export/raw throughput {export_rate / raw_rate:.2f}")
        finally:
            servers.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=1_000_000)
    parser.add_argument("--deidentify", type=int, default=20_000)
    parser.add_argument("--patients", type=int, default=200, help="device patients per member in the month")
    parser.add_argument("--readings", type=int, default=10, help="readings per patient in the month")
    parser.add_argument("--batch", type=int, default=50, help="readings a record (the gateway's batches; 1: one each)")
    args = parser.parse_args()
    deidentify(args.deidentify)
    export(args.patients, args.readings, args.batch)
    with tempfile.TemporaryDirectory(prefix="bench-analytics-") as folder:
        indicator(args.observations, Path(folder))


if __name__ == "__main__":
    main()
