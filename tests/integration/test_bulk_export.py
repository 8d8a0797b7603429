"""FHIR Bulk ``$export`` for the city health commission (docs/analytics.md), against the real API server,
MinIO, PostgreSQL, operator, key service and exchange: a month of activity through the public APIs, the
de-identified export, its Parquet in an analytics bucket, an indicator against the exchange's own index.

The institutions are those of examples/ with a suffix of this module's own (tests/exchange_harness.py).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import psycopg
import pytest
from minio import Minio

from medcloud_analytics.indicators import MIN_PATIENTS, compute_all
from medcloud_analytics.ingest import BulkClient, load
from medcloud_analytics.lake import connect
from medcloud_cli.localcluster.cluster import MinioInfo
from tests.bulk_support import (
    analytics_lake,
    assert_no_secret_in_lake,
    bind_commission,
    export,
    kick_off,
    lines,
)
from tests.exchange_harness import ExampleAlliance
from tests.exchange_support import Caller, ago, created, new_patient, outcome_of, post
from tests.operator_support import ClusterAdmin
from tests.workflows_data import cbc_report, coverage
from tests.workflows_requests import service_request

pytestmark = [pytest.mark.cluster, pytest.mark.minio]

# The example alliance, stood up by the fixtures of tests/integration/conftest.py.
ALLIANCE = ExampleAlliance("bx")
SUFFIX = ALLIANCE.suffix
COUNTY, TOWNSHIP = ALLIANCE["county-people"], ALLIANCE["township-maple"]
Json = dict[str, Any]


@pytest.fixture(scope="module")
def commission(local_cluster: Any, admin: ClusterAdmin, exchange: httpx.Client) -> Caller:
    return bind_commission(local_cluster, admin, exchange, f"commission-export-{SUFFIX}")


def _index_count(database: str, table: str, until: str) -> int:
    """What the index holds of ``table`` up to the export's transaction time, counted apart from the exchange."""
    with psycopg.connect(database) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE created_at <= %s", (until,)).fetchone()  # noqa: S608
    return int(row[0]) if row else 0


def test_the_commission_exports_de_identified_ndjson_and_since_carries_only_changes(
    exchange: httpx.Client, callers: dict[str, Caller], commission: Caller, database: str, minio_server: MinioInfo
) -> None:
    township, county = callers[TOWNSHIP], callers[COUNTY]
    secrets: list[str] = ["Chen", "Mei", "1990-03-07", "Riverton Province Medical Insurance Bureau"]
    for _ in range(6):
        card, resident = new_patient()
        secrets += [card, resident]
        cover = created(post(exchange, township, "/fhir/Coverage", coverage(card, resident)))
        patient = {"reference": cover["beneficiary"]["reference"]}
        created(post(exchange, county, "/fhir/DiagnosticReport", cbc_report(COUNTY, patient, ago(3))))
        created(
            post(
                exchange,
                township,
                "/fhir/ServiceRequest",
                service_request("referral", TOWNSHIP, COUNTY, patient["reference"]),
            )
        )

    manifest, files = export(exchange, commission)
    until = manifest["transactionTime"]
    counts = {o["type"]: o["count"] for o in manifest["output"]}
    assert counts["Coverage"] == _index_count(database, "coverage", until)
    assert counts["DiagnosticReport"] == _index_count(database, "exam_result", until)
    assert counts["ServiceRequest"] == _index_count(database, "service_request", until)
    assert counts["Patient"] == _index_count(database, "patient", until)
    exported = b"".join(files.values())
    for resource_type, data in files.items():
        assert len(lines(data, resource_type)) == counts[resource_type]
    for secret in secrets:
        assert secret.encode() not in exported, secret
    # Every patient reference is a pseudonym of a Patient in the same export, never an exchange id.
    patients = {p["id"] for p in lines(files["Patient"], "Patient")}
    with psycopg.connect(database) as conn:
        ids = [str(r[0]) for r in conn.execute("SELECT id FROM patient").fetchall()]
    assert not any(i.encode() in exported for i in ids)
    subjects = {
        r["subject"]["reference"].removeprefix("Patient/") for r in lines(files["DiagnosticReport"], "DiagnosticReport")
    }
    assert subjects <= patients

    # Into the analytics bucket as Parquet, through the analytics' own Bulk client: nothing identifying
    # there either, in any byte or any value read back; DuckDB counts what the manifest counted.
    lake = analytics_lake(minio_server)
    bulk = BulkClient(exchange, commission.token, commission.practitioner)
    first = bulk.export()
    assert load(lake, first) == sum(counts.values())
    assert_no_secret_in_lake(lake, minio_server, [*secrets, *ids])
    by_type = dict(connect(lake).execute("SELECT resource_type, count(*) FROM records GROUP BY 1").fetchall())
    assert by_type == {t: n for t, n in counts.items() if n}

    # The referral indicator equals what the exchange's own index says, counted apart from the export.
    tiers = {name: hospital["tier"] for name, hospital in ALLIANCE.hospitals().items()}
    cells = compute_all(connect(lake), tiers)
    up = [c for c in cells["referrals"] if (c["from_tier"], c["to_tier"]) == (tiers[TOWNSHIP], tiers[COUNTY])]
    with psycopg.connect(database) as conn:
        referrals, referred = conn.execute(
            "SELECT count(*), count(DISTINCT patient_id) FROM service_request "
            "WHERE kind = 'referral' AND requester = %s AND performer = %s AND created_at <= %s",
            (TOWNSHIP, COUNTY, first.transaction_time),
        ).fetchone() or (0, 0)
    assert referred >= MIN_PATIENTS
    assert [(c["direction"], c["referrals"], c["patients"]) for c in up] == [("up", referrals, referred)]

    # What changed after the first export, and nothing else.
    card, resident = new_patient()
    created(post(exchange, township, "/fhir/Coverage", coverage(card, resident)))
    later_manifest, later_files = export(exchange, commission, _since=until)
    later_counts = {o["type"]: o["count"] for o in later_manifest["output"]}
    assert later_counts == {"Patient": 1, "Coverage": 1}
    assert card.encode() not in b"".join(later_files.values())
    (new_patient_line,) = lines(later_files["Patient"], "Patient")
    assert new_patient_line["id"] not in patients

    # _type narrows the export; a type the exchange does not export is a clear 400.
    only, _ = export(exchange, commission, _type="Coverage")
    assert [o["type"] for o in only["output"]] == ["Coverage"]
    bad = kick_off(exchange, commission, _type="Medication,Claim")
    assert bad.status_code == 400, bad.text
    assert "does not export: Claim, Medication" in outcome_of(bad)


def test_an_export_without_the_role_is_refused_and_audited(
    exchange: httpx.Client, callers: dict[str, Caller], commission: Caller, minio_server: MinioInfo
) -> None:
    county = callers[COUNTY]
    refused = kick_off(exchange, county)
    assert refused.status_code == 403, refused.text
    assert "consortia/export" in outcome_of(refused)
    root = Minio(minio_server.endpoint, minio_server.access_key, minio_server.secret_key, secure=False)
    bucket = f"exchange-audit-{ALLIANCE.consortium}"
    events = [
        json.loads(root.get_object(bucket, o.object_name).read())
        for o in root.list_objects(bucket, prefix="system/", recursive=True)
    ]
    denied = [e for e in events if e["outcome"] == "4" and "consortia/export" in e.get("outcomeDesc", "")]
    assert denied, "the refused export left no AuditEvent"
    # The commission's own kick-off is audited too, as a RESTful operation.
    export(exchange, commission, _type="Patient")
    events = [
        json.loads(root.get_object(bucket, o.object_name).read())
        for o in root.list_objects(bucket, prefix="system/", recursive=True)
    ]
    assert any(e["subtype"][0]["code"] == "operation" and "$export kick-off" in e["outcomeDesc"] for e in events)
    # Someone else's job is not known to them; no token is a 401.
    job = kick_off(exchange, commission).headers["Content-Location"]
    assert exchange.get(job, headers=county.headers()).status_code == 403
    assert exchange.get(job).status_code == 401
