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
  ``json.dumps`` of the same line (what streaming a raw record through costs without it); the export's
  other costs (PostgreSQL rows, MinIO reads, decryption) are those of bench_records.py and are not
  repeated here, so this is not the whole export's throughput.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb

from medcloud.models.deidentification import DeidentificationPolicy
from medcloud_exchange.bulk.deidentify import Deidentifier

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=1_000_000)
    parser.add_argument("--deidentify", type=int, default=20_000)
    args = parser.parse_args()
    deidentify(args.deidentify)
    with tempfile.TemporaryDirectory(prefix="bench-analytics-") as folder:
        indicator(args.observations, Path(folder))


if __name__ == "__main__":
    main()
