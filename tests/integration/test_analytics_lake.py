"""Parquet in an analytics bucket of its own and DuckDB's SQL over it, against the real MinIO.

The resources are the public FHIR examples (tests/data/analytics/SOURCES.md) de-identified by the
exchange's de-identifier, and blood pressures made from the IHE example across two months.
"""

from __future__ import annotations

import copy
import io
import json
import uuid
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from minio.error import S3Error

from medcloud.models.deidentification import DeidentificationPolicy
from medcloud_analytics import flatten
from medcloud_analytics.dashboard import DOCUMENT_KEY, document, publish
from medcloud_analytics.indicators import compute_all
from medcloud_analytics.lake import Lake, connect
from medcloud_cli.localcluster.analytics import make_analytics_bucket
from medcloud_cli.localcluster.cluster import MinioInfo
from medcloud_exchange.bulk.deidentify import Deidentifier
from tests.analytics_activity import TIERS, activity
from tests.analytics_support import analytics_cli
from tests.bulk_support import analytics_lake, assert_no_secret_in_lake, parquet_objects

pytestmark = [pytest.mark.minio]

DATA = Path(__file__).parents[1] / "data"
SECRETS = ("Chalmers", "Peter", "12345", "Erewhon", "1974-12-25", "ex-patient", "a minimal blood pressure")


def _resources() -> list[dict[str, Any]]:
    policy = DeidentificationPolicy.model_validate({"purposes": [{"name": "indicators"}]})
    deid = Deidentifier.for_purpose(policy, b"k" * 32, "indicators", date(2026, 12, 2))
    patient = json.loads((DATA / "analytics" / "patient-example.json").read_text())
    bp = json.loads((DATA / "analytics" / "observation-bloodpressure.json").read_text())
    out = [deid.resource(patient)]
    for i in range(12):
        reading = copy.deepcopy(bp)
        reading["id"] = f"bp-{i}"
        reading["subject"] = {"reference": f"Patient/p-{i % 4}"}
        reading["effectiveDateTime"] = f"2026-{10 + i % 2}-{1 + i:02d}T08:00:00+08:00"
        reading["component"][0]["valueQuantity"]["value"] = 120 + 3 * i
        out.append(deid.resource(reading, patient=f"p-{i % 4}"))
    return out


def _files(root: Minio, lake: Lake) -> list[Any]:
    """The Parquet objects (pyarrow's S3 writer also leaves empty directory markers ending in /)."""
    return [o for o in root.list_objects(lake.bucket, recursive=True) if o.object_name.endswith(".parquet")]


@pytest.fixture
def lake(minio_server: MinioInfo) -> Lake:
    return analytics_lake(minio_server)


def test_parquet_is_partitioned_by_type_and_month_and_duckdb_reads_it_over_s3(
    lake: Lake, minio_server: MinioInfo
) -> None:
    resources = _resources()
    written = lake.write(flatten.table(resources), "batch-1")
    root = Minio(minio_server.endpoint, minio_server.access_key, minio_server.secret_key, secure=False)
    names = sorted(o.object_name for o in parquet_objects(root, lake))
    assert names == sorted(w.removeprefix(f"{lake.bucket}/") for w in written)
    assert {n.rsplit("/", 1)[0] for n in names} == {
        "resource_type=Patient/month=unknown",
        "resource_type=Observation/month=2026-10",
        "resource_type=Observation/month=2026-11",
    }

    conn = connect(lake)
    got = dict(
        conn.execute(
            "SELECT month, count(*) FROM records WHERE resource_type = 'Observation' GROUP BY month"
        ).fetchall()
    )
    expected = Counter(flatten.month_of(r) for r in resources if r["resourceType"] == "Observation")
    assert got == dict(expected)
    (systolic,) = conn.execute("SELECT max(systolic) FROM records").fetchone() or (None,)
    assert systolic == 120 + 3 * 11
    # The same patient pseudonym joins across months; four patients in all.
    (patients,) = conn.execute(
        "SELECT count(DISTINCT patient) FROM records WHERE resource_type = 'Observation'"
    ).fetchone() or (0,)
    assert patients == 4

    # A second batch is added beside the first, never over it; a resource in both counts once, as the newer says.
    again = [resources[1], {**resources[2], "status": "amended"}]
    second = lake.write(flatten.table(again), "batch-2")
    assert {o.object_name for o in parquet_objects(root, lake)} == set(names) | {
        w.removeprefix(f"{lake.bucket}/") for w in second
    }
    (total,) = conn.execute("SELECT count(*) FROM records").fetchone() or (0,)
    assert total == len(resources)
    (status,) = conn.execute("SELECT status FROM records WHERE id = ?", [resources[2]["id"]]).fetchone() or (None,)
    assert status == "amended"


def test_no_identifier_in_any_parquet_byte_or_value(lake: Lake, minio_server: MinioInfo) -> None:
    lake.write(flatten.table(_resources()), "batch-1")
    assert_no_secret_in_lake(lake, minio_server, list(SECRETS))


def test_medcloud_analytics_prints_the_indicators_suppressed(lake: Lake) -> None:
    lake.write(flatten.table(list(activity())), "batch-1")
    result = analytics_cli(lake, "indicators")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "Referrals by tier and direction" in lines
    (up,) = [line for line in lines if line.startswith("2026-11") and " up " in f" {line} "]
    assert up.split() == ["2026-11", "township", "county", "up", "8", "7"]
    (down,) = [line for line in lines if " down " in f" {line} "]
    assert down.split()[-2:] == ["<5", "<5"]
    (county,) = [line for line in lines if line.startswith("county-people")]
    assert "58.3%" in county  # 7 of 12 with a controlled blood pressure
    as_json = analytics_cli(lake, "indicators", "--json")
    cells = json.loads(as_json.output)
    assert {c["patients"] for c in cells["monitoring"] if c["suppressed"]} == {None}


def test_the_analytics_users_reach_their_bucket_alone(minio_server: MinioInfo) -> None:
    """The writer loads, queries and publishes; the dashboard reader gets the published document only."""
    made = make_analytics_bucket(minio_server, f"analytics-{uuid.uuid4().hex[:8]}")
    writer = Lake(minio_server.endpoint, made.bucket, made.writer_key, made.writer_secret)
    writer.write(flatten.table(_resources()), "batch-1")
    conn = connect(writer)
    assert conn.execute("SELECT count(*) FROM records").fetchone() == (13,)
    publish(writer, document(compute_all(conn, TIERS), "2026-12-02T00:00:00Z"))

    def client(key: str, secret: str) -> Minio:
        return Minio(minio_server.endpoint, access_key=key, secret_key=secret, secure=False)

    def refused(call: Any) -> bool:
        try:
            call()
        except S3Error as exc:
            return exc.code == "AccessDenied"
        return False

    as_writer = client(made.writer_key, made.writer_secret)
    root = client(minio_server.access_key, minio_server.secret_key)
    other = f"other-{uuid.uuid4().hex[:8]}"
    root.make_bucket(other)
    root.put_object(other, "x.json", io.BytesIO(b"{}"), 2)
    assert refused(lambda: as_writer.get_object(other, "x.json"))
    assert refused(lambda: as_writer.put_object(other, "y.json", io.BytesIO(b"{}"), 2))
    parquet = _files(root, writer)[0]
    assert refused(lambda: as_writer.remove_object(made.bucket, parquet.object_name))

    reader = client(made.reader_key, made.reader_secret)
    assert json.loads(reader.get_object(made.bucket, DOCUMENT_KEY).read())["charts"] is not None
    assert refused(lambda: reader.get_object(made.bucket, parquet.object_name))
    assert refused(lambda: list(reader.list_objects(made.bucket, recursive=True)))
    assert refused(lambda: reader.put_object(made.bucket, DOCUMENT_KEY, io.BytesIO(b"{}"), 2))
    assert made.dashboard_env()["MEDCLOUD_API_ANALYTICS_ACCESS_KEY"] == made.reader_key
