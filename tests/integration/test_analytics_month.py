"""A month of consortium activity through the public APIs, exported for the city health commission and
checked (docs/analytics.md, issue 14), against the real API server, MinIO, broker, PostgreSQL, operator,
key service, exchange and one real gateway per member.

tests/consortium_month.py plans the month (seeded) and drives it: device readings over HTTPS, HL7 v2
(MLLP) and MQTT into each member's device store, cards, consents, orders, recognised results, referrals
and remote consultations through the exchange. The export's every NDJSON line is valid FHIR R4; no
identifier, name, card number or exact date is in any byte of it or of its Parquet; the indicators equal
counts made here from the source records (the device stores read back, the exchange's index, what was
sent); a second export with ``_since`` carries only what changed.

The examples' five institutions, city to village, renamed with a suffix of this module's own.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from medcloud.models import DeviceProtocol
from medcloud.records.batches import read_resources
from medcloud.records.client import RecordClient
from medcloud_analytics.indicators import BY_NAME, GLUCOSE_CODES, MIN_PATIENTS, compute_all, suppress
from medcloud_analytics.ingest import BulkClient, load
from medcloud_analytics.lake import connect
from medcloud_cli.localcluster.broker import BrokerInfo
from medcloud_cli.localcluster.cluster import MinioInfo
from medcloud_cli.localcluster.pki import CertificateAuthority
from medcloud_gateway.metrics import Result
from medcloud_gateway.service import build_gateway, connect_records
from medcloud_gateway.settings import GatewaySettings
from tests.bulk_support import (
    analytics_lake,
    assert_no_secret_in_lake,
    bind_commission,
    export,
    lines,
)
from tests.consortium_month import TIER_RANK, Driver, GatewayAddress, Ledger, Reading, Scale, plan
from tests.exchange_harness import (
    KEYS_AUDIENCE,
    ExampleAlliance,
    key_service,
    running_exchange,
    token,
)
from tests.exchange_support import Caller
from tests.integration.test_gateway import Running, device_client, loopback_listeners, running
from tests.operator_support import ClusterAdmin
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.broker]

# The example alliance (tests/exchange_harness.py): the city, county, township, village and community.
ALLIANCE = ExampleAlliance("am")
SUFFIX = ALLIANCE.suffix
NAMES = ALLIANCE.names
VILLAGE = NAMES["village-willow"]
TIERS = {name: h["tier"] for name, h in ALLIANCE.hospitals().items()}
CONSORTIUM = ALLIANCE.consortium
DEVICE_STORE = "device-data"
SCALE = Scale(patients_per_member=10, readings_per_patient=3, days=28, seed=14)
"""Five members of ten device patients and ten exchange patients each: a small month (about a minute)."""
Json = dict[str, Any]


@pytest.fixture(scope="module")
def members(alliance: ExampleAlliance, members: list[str], admin: ClusterAdmin) -> Iterator[list[str]]:
    """The alliance's members (tests/integration/conftest.py), each with a Ready ``device-data`` store too."""
    device_store = {"recordClass": "device-data", "retention": {"mode": "GOVERNANCE", "period": "1d"}}
    try:
        for name in members:
            admin.create("RecordStore", DEVICE_STORE, device_store, f"hospital-{name}")
        for name in members:

            def ready(name: str = name) -> bool:
                obj = admin.get("RecordStore", DEVICE_STORE, f"hospital-{name}")
                return bool((obj or {}).get("status", {}).get("phase") == "Ready")

            wait_for(ready, f"RecordStore {name}/{DEVICE_STORE} Ready", timeout=180)
        yield members
    finally:
        for name in members:
            admin.delete("RecordStore", DEVICE_STORE, f"hospital-{name}")
        for name in members:
            wait_for(partial(admin.gone, "RecordStore", DEVICE_STORE, f"hospital-{name}"), "store gone", 120)


@pytest.fixture(scope="module")
def keys(local_cluster: Any, members: list[str]) -> Iterator[str]:
    with key_service(local_cluster) as url:
        yield url


@pytest.fixture(scope="module")
def exchange(
    local_cluster: Any,
    admin: ClusterAdmin,
    members: list[str],
    keys: str,
    database: str,
    minio_server: MinioInfo,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("month")
    with running_exchange(
        local_cluster,
        admin,
        CONSORTIUM,
        database=database,
        minio_server=minio_server,
        key_service_url=keys,
        folder=folder,
    ) as http:
        yield http


@pytest.fixture(scope="module")
def commission(local_cluster: Any, admin: ClusterAdmin, exchange: httpx.Client) -> Caller:
    return bind_commission(local_cluster, admin, exchange, f"commission-month-{SUFFIX}")


def _decoded(admin: ClusterAdmin, namespace: str, name: str) -> dict[str, str]:
    secret = admin.core.read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def _gateway_settings(
    admin: ClusterAdmin, member: str, keys: str, broker: BrokerInfo, serving: Any, folder: Path
) -> GatewaySettings:
    """A member's gateway as the operator runs it: its device store's own credentials, its own identity's
    data keys from the key service (a Role on that store alone), MQTT only at the village clinic (one broker
    here: every gateway subscribed to it would take every reading)."""
    namespace = f"hospital-{member}"
    admin.rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "gateway-keys"},
            "rules": [
                {
                    "apiGroups": ["medcloud.io"],
                    "resources": ["recordstores/keys"],
                    "resourceNames": [DEVICE_STORE],
                    "verbs": ["get"],
                }
            ],
        },
    )
    admin.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "gateway-keys"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gateway-keys"},
            "subjects": [{"kind": "ServiceAccount", "name": "gateway", "namespace": namespace}],
        },
    )
    token_file = folder / f"{member}.token"
    token_file.write_text(token(admin, namespace, "gateway", KEYS_AUDIENCE))
    store = _decoded(admin, namespace, f"{DEVICE_STORE}-credentials")
    protocols = [DeviceProtocol.HTTPS, DeviceProtocol.HL7V2] + ([DeviceProtocol.MQTT] if member == VILLAGE else [])
    return GatewaySettings.model_validate(
        {
            "hospital": member,
            "namespace": namespace,
            "record_store": DEVICE_STORE,
            "protocols": protocols,
            "s3_endpoint": store["COSI_S3_ENDPOINT"],
            "bucket": store["BUCKET_NAME"],
            "access_key": store["AWS_ACCESS_KEY_ID"],
            "secret_key": store["AWS_SECRET_ACCESS_KEY"],
            "key_service_url": keys,
            "key_service_token_file": token_file,
            **loopback_listeners(broker, serving),
        }
    )


@pytest.fixture(scope="module")
def gateways(
    admin: ClusterAdmin,
    members: list[str],
    keys: str,
    mqtt_broker: BrokerInfo,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Running]]:
    folder = tmp_path_factory.mktemp("gateways")
    ca = CertificateAuthority(folder / "pki", "gateway-ca", "medcloud-month-gateway-ca")
    serving = ca.issue("gateway", "gateway", server_names=("127.0.0.1",), client=False)
    with contextlib.ExitStack() as stack:
        out: dict[str, Running] = {}
        for member in members:
            settings = _gateway_settings(admin, member, keys, mqtt_broker, serving, folder)
            records = connect_records(settings)

            def granted(records: RecordClient = records) -> bool:
                try:
                    records.put_json("probe/keys.json", {})
                except Exception:  # RBAC reaches the authorizer a moment after it is written
                    return False
                return True

            wait_for(granted, f"{member}'s gateway keys granted", timeout=30)
            out[member] = stack.enter_context(running(build_gateway(settings), ca.paths.cert))
        yield out


@pytest.fixture(scope="module")
def driver(
    exchange: httpx.Client, callers: dict[str, Caller], gateways: dict[str, Running], mqtt_broker: BrokerInfo
) -> Iterator[Driver]:
    device = device_client(mqtt_broker, "month-devices")
    device.connect(mqtt_broker.host, mqtt_broker.port)
    device.loop_start()
    addresses = {
        member: GatewayAddress(
            https=f"https://127.0.0.1:{g.settings.https_port}",
            ca_file=g.ca_file,
            hl7v2=("127.0.0.1", g.settings.hl7v2_port),
            mqtt=device if member == VILLAGE else None,
        )
        for member, g in gateways.items()
    }
    made = Driver(exchange, callers, addresses)
    try:
        yield made
    finally:
        made.close()
        device.loop_stop()
        device.disconnect()


# --------------------------------------------------------------------------- the independent counts


def _mqtt_stored(gateways: dict[str, Running], sent: int) -> bool:
    return gateways[VILLAGE].metrics.value(DeviceProtocol.MQTT, Result.STORED) >= sent


def source_observations(gateways: dict[str, Running]) -> dict[str, list[Json]]:
    """Each member's device store read back with its gateway's own identity: the source records (batched or
    single, each reading once: the ground floor's reader, docs/record-encryption.md)."""
    out = {}
    for member, gateway in gateways.items():
        records = connect_records(gateway.settings)
        out[member] = list(read_resources(records, "Observation"))
    return out


def _month(when: str) -> str:
    return datetime.fromisoformat(when.replace("Z", "+00:00")).astimezone(UTC).strftime("%Y-%m")


def expected_monitoring(observations: dict[str, list[Json]]) -> list[Json]:
    """The monitoring cells counted in Python from the source Observations (last reading of each month)."""
    readings: dict[tuple[str, str, str], list[Json]] = defaultdict(list)
    for member, found in observations.items():
        for o in found:
            readings[(member, _month(o["effectiveDateTime"]), o["subject"]["reference"])].append(o)
    cells: dict[tuple[str, str], Json] = {}
    for (member, month, _), found in readings.items():
        cell = cells.setdefault(
            (member, month),
            {"institution": member, "month": month, "patients": 0, "bp_patients": 0, "bp_controlled": 0}
            | {"glucose_patients": 0, "glucose_controlled": 0},
        )
        cell["patients"] += 1
        pressures = [o for o in found if o["code"]["coding"][0]["code"] == "85354-9"]
        glucoses = [o for o in found if o["code"]["coding"][0]["code"] in GLUCOSE_CODES]
        if pressures:
            last = max(pressures, key=lambda o: o["effectiveDateTime"])
            parts = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in last["component"]}
            cell["bp_patients"] += 1
            cell["bp_controlled"] += int(parts["8480-6"] < 140 and parts["8462-4"] < 90)
        if glucoses:
            last = max(glucoses, key=lambda o: o["effectiveDateTime"])
            quantity = last["valueQuantity"]
            mmol = quantity["value"] / 18.0 if quantity["code"] == "mg/dL" else quantity["value"]
            cell["glucose_patients"] += 1
            cell["glucose_controlled"] += int(mmol < 7.0)
    return suppress(sorted(cells.values(), key=lambda c: (c["institution"], c["month"])), BY_NAME["monitoring"])


def _cells(rows: list[Json], keys: tuple[str, ...], count: str) -> list[Json]:
    grouped: dict[tuple[Any, ...], list[Json]] = defaultdict(list)
    for r in rows:
        grouped[tuple(r[k] for k in keys)].append(r)
    return [
        {**dict(zip(keys, k, strict=True)), count: len(v), "patients": len({r["patient"] for r in v})}
        for k, v in sorted(grouped.items())
    ]


def expected_referrals(ledger: Ledger, database: str, until: str) -> list[Json]:
    """Referral cells from the exchange's own index (who referred whom), the months from what was sent."""
    with psycopg.connect(database) as conn:
        indexed = conn.execute(
            "SELECT id, requester, performer, patient_id FROM service_request "
            "WHERE kind = 'referral' AND created_at <= %s",
            (until,),
        ).fetchall()
    rows = []
    for rid, requester, performer, patient in indexed:
        month = ledger.requests[str(rid)]["month"]
        rows.append(
            {
                "month": month,
                "from_tier": TIERS[requester],
                "to_tier": TIERS[performer],
                "direction": _direction(requester, performer),
                "patient": patient,
            }
        )
    return suppress(_cells(rows, ("month", "from_tier", "to_tier", "direction"), "referrals"), BY_NAME["referrals"])


def _direction(source: str, target: str) -> str:
    rank = TIER_RANK[TIERS[target]] - TIER_RANK[TIERS[source]]
    return "up" if rank > 0 else "down" if rank < 0 else "across"


def expected_visits(ledger: Ledger, database: str, until: str) -> list[Json]:
    """Visit cells from the exchange's own index: the appointments' host, status, patient and start, and the
    referral each is carried by (its requester and performer); cancelled and no-show ones are no visit."""
    with psycopg.connect(database) as conn:
        indexed = conn.execute(
            "SELECT a.id, a.host, a.status, a.patient_id, a.starts, s.requester, s.performer FROM appointment a "
            "LEFT JOIN service_request s ON s.id = a.service_request_id AND s.kind = 'referral' "
            "WHERE a.updated_at <= %s",
            (until,),
        ).fetchall()
    # The index holds what the generator did: every appointment, its outcome, the referral carrying it.
    assert {str(r[0]): (r[1], r[2]) for r in indexed} == {
        k: (a["host"], a["status"]) for k, a in ledger.appointments.items()
    }
    rows = [
        {
            "month": starts.astimezone(UTC).strftime("%Y-%m"),
            "tier": TIERS[host],
            "direction": _direction(requester, performer) if requester else "direct",
            "patient": patient,
        }
        for _, host, status, patient, starts, requester, performer in indexed
        if status in ("booked", "arrived", "fulfilled", "checked-in")
    ]
    return suppress(_cells(rows, ("month", "tier", "direction"), "visits"), BY_NAME["visits"])


def expected_consultations(ledger: Ledger) -> list[Json]:
    rows = [
        {"month": r["month"], "specialty": r["specialty"], "patient": r["patient"]}
        for r in ledger.requests.values()
        if r["kind"] == "consultation"
    ]
    return suppress(_cells(rows, ("month", "specialty"), "consultations"), BY_NAME["consultations"])


def expected_recognition(ledger: Ledger) -> list[Json]:
    orders = _cells([r for r in ledger.requests.values() if r["kind"] == "laboratory"], ("month",), "orders")
    recognised = {c["month"]: c for c in _cells(list(ledger.recognised.values()), ("month",), "recognised")}
    rows = [
        {
            **o,
            "recognised": recognised.get(o["month"], {}).get("recognised", 0),
            "recognised_patients": recognised.get(o["month"], {}).get("patients", 0),
        }
        for o in orders
    ]
    return suppress(rows, BY_NAME["recognition"])


def _keyed(cells: list[Json], *keys: str) -> list[Json]:
    return sorted(cells, key=lambda c: tuple(str(c[k]) for k in keys))


# --------------------------------------------------------------------------- the test


def test_a_month_of_activity_exports_de_identified_and_the_indicators_equal_the_source_counts(
    driver: Driver,
    gateways: dict[str, Running],
    commission: Caller,
    exchange: httpx.Client,
    database: str,
    minio_server: MinioInfo,
) -> None:
    now = datetime.now(UTC)
    month = plan(TIERS, SCALE, now, mqtt_member=VILLAGE)
    ledger = driver.send(month, TIERS)
    assert set(ledger.readings) == {"https", "hl7v2", "mqtt"}
    assert len(ledger.patients) >= 50
    wait_for(partial(_mqtt_stored, gateways, ledger.readings["mqtt"]), "the MQTT readings stored", timeout=60)

    manifest, files = export(exchange, commission)
    until = manifest["transactionTime"]
    counts = {o["type"]: o["count"] for o in manifest["output"]}
    source = source_observations(gateways)
    assert counts["Observation"] == sum(len(v) for v in source.values())
    assert counts["Patient"] == len(ledger.patients)
    exported = {t: lines(data, t) for t, data in files.items()}  # every line valid FHIR R4
    assert {t: len(v) for t, v in exported.items()} == counts
    assert counts["Appointment"] == len(ledger.appointments)
    assert counts["Communication"] == len(ledger.messages)
    assert {a["status"] for a in exported["Appointment"]} == {"booked", "arrived", "fulfilled", "cancelled", "noshow"}

    # No identifier, name, card number, local patient or device id, nor an exact date, in any exported byte.
    secrets = [*ledger.secrets, "Doe", "John", "Chen", "Mei", "1990-03-07", "Riverton Province Medical Insurance"]
    # Exact days: a month-reduced dateTime is the first of its month at 00:00Z, so the 1st says nothing.
    days = {r.time for r in month.readings} | {v.when for v in month.visits}
    secrets += sorted({d.strftime("%Y-%m-%d") for d in days if d.day != 1})
    with psycopg.connect(database) as conn:
        secrets += [str(r[0]) for r in conn.execute("SELECT id FROM patient").fetchall()]
    raw = b"".join(files.values())
    for secret in secrets:
        assert secret.encode() not in raw, secret

    # Into the analytics bucket as Parquet: nothing identifying there either.
    lake = analytics_lake(minio_server)
    first = BulkClient(exchange, commission.token, commission.practitioner).export()
    assert load(lake, first) == sum(counts.values())
    assert_no_secret_in_lake(lake, minio_server, secrets)

    # The indicators equal what the source records say, counted apart from the export.
    cells = compute_all(connect(lake), TIERS)
    monitoring = _keyed(cells["monitoring"], "institution", "month")
    assert monitoring == _keyed(expected_monitoring(source), "institution", "month")
    assert {c["institution"] for c in monitoring} == set(TIERS)
    assert any(not c["suppressed"] for c in monitoring), "every monitoring cell suppressed: the month is too small"
    referrals = _keyed(cells["referrals"], "month", "from_tier", "to_tier", "direction")
    assert referrals == _keyed(
        expected_referrals(ledger, database, first.transaction_time), "month", "from_tier", "to_tier", "direction"
    )
    assert any(not c["suppressed"] and c["direction"] == "up" for c in referrals)
    visits = _keyed(cells["visits"], "month", "tier", "direction")
    assert visits == _keyed(expected_visits(ledger, database, first.transaction_time), "month", "tier", "direction")
    assert any(not c["suppressed"] and c["direction"] == "direct" for c in visits)
    assert any(not c["suppressed"] and c["direction"] == "up" for c in visits), "no referral-carried visit cell shown"
    assert any(c["suppressed"] and c["visits"] is None and c["patients"] is None for c in visits)
    assert _keyed(cells["consultations"], "month", "specialty") == _keyed(
        expected_consultations(ledger), "month", "specialty"
    )
    assert _keyed(cells["recognition"], "month") == _keyed(expected_recognition(ledger), "month")
    for indicator in cells.values():
        for cell in indicator:
            assert cell["suppressed"] or cell["patients"] >= MIN_PATIENTS

    # What changes after the first export, and nothing else: three readings and one referral.
    later = now + timedelta(minutes=1)
    county = NAMES["county-people"]
    extra = [
        Reading(county, f"p{SCALE.seed}-{n:05d}", f"{county[:20]}-{n:05d}", "blood-pressure", True, later, "https")
        for n in (1, 2, 4)
    ]
    for reading in extra:
        driver.send_reading(reading)
    visit = next(v for v in month.visits if v.home == NAMES["township-maple"])
    newcomer = dataclasses.replace(
        visit,
        card=visit.card + "9",
        resident=visit.resident + "9",
        referral_to=county,
        order=False,
        order_recognised=False,
        consultation=None,
        appointment=None,
    )
    driver.send_visit(newcomer, TIERS)
    second, second_files = export(exchange, commission, _since=until)
    changed = {o["type"]: o["count"] for o in second["output"]}
    assert changed["Observation"] == len(extra)
    assert (changed["ServiceRequest"], changed["Patient"], changed["Coverage"]) == (1, 1, 1)
    assert set(changed) <= {"Observation", "ServiceRequest", "Task", "Patient", "Coverage"}
    before = {r["id"] for r in exported["Observation"]}
    assert not {r["id"] for r in lines(second_files["Observation"], "Observation")} & before
