# ruff: noqa: S608  (the SQL is fixed text: only this module's constants are formatted into it)
"""The indicators the city health commission reads, as SQL over the lake's ``records``, small cells suppressed.

Every indicator is a list of cells (one dict per row) with the patients it counts. A cell counting fewer
than :data:`MIN_PATIENTS` patients is suppressed: its counts and shares become None and ``suppressed``
True, in every output (terminal, dashboard, JSON). A share is also suppressed when its numerator or the
rest of its denominator is small, since either could be worked out from the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

MIN_PATIENTS = 5

# Tiers from the top of the city's system down; referrals go up, down or across between them.
TIER_RANK = {"city": 3, "county": 2, "district": 2, "township": 1, "village": 1, "community": 1}

REFERRAL = "3457005"
CONSULTATION = "11429006"
ORDERS = ("108252007", "363679005")  # laboratory procedure, imaging
SYSTOLIC_CONTROLLED = 140.0  # mmHg, below
DIASTOLIC_CONTROLLED = 90.0
GLUCOSE_CODES = ("2339-0", "15074-8", "41653-7")  # glucose in blood (mass), (moles), capillary
GLUCOSE_CONTROLLED_MMOL = 7.0  # fasting, below; mg/dL values are converted (x 1/18)


@dataclass(frozen=True)
class Indicator:
    name: str
    title: str
    dimensions: tuple[str, ...]
    measures: tuple[str, ...]
    """Counts (suppressed with the cell); ``patients`` is always one of them."""
    shares: tuple[tuple[str, ...], ...] = ()
    """(share column, numerator patients column, denominator patients column, counts hidden with the numerator)."""
    patient_counts: tuple[str, ...] = ("patients",)
    """Measures that count patients: each is suppressed on its own when small."""
    sql: str = ""


def suppress(rows: Sequence[Mapping[str, Any]], indicator: Indicator) -> list[dict[str, Any]]:
    """The cells with small patient counts suppressed, shares only where all their parts are large."""
    out = []
    for row in rows:
        cell = dict(row)
        small = (cell.get("patients") or 0) < MIN_PATIENTS
        for share, numerator, denominator, *alongside in indicator.shares:
            num, den = int(cell.get(numerator) or 0), int(cell.get(denominator) or 0)
            if small or num < MIN_PATIENTS or den - num < MIN_PATIENTS:
                # The numerator (or a count of the same events) would give the small rest away.
                for hidden in (share, numerator, *alongside):
                    cell[hidden] = None
            else:
                cell[share] = round(num / den, 4)
        for measure in indicator.patient_counts:
            if cell.get(measure) is not None and int(cell[measure]) < MIN_PATIENTS:
                cell[measure] = None
        if small:
            for measure in indicator.measures:
                cell[measure] = None
        cell["suppressed"] = small
        out.append(cell)
    return out


_SPECIALTY = (
    "coalesce(json_extract_string(resource, '$.performerType.coding[0].code'), "
    "json_extract_string(resource, '$.performerType[0].coding[0].code'), code)"
)

INDICATORS: tuple[Indicator, ...] = (
    Indicator(
        "referrals",
        "Referrals by tier and direction",
        ("month", "from_tier", "to_tier", "direction"),
        ("referrals", "patients"),
        sql=f"""
            SELECT r.month, f.tier AS from_tier, t.tier AS to_tier, direction(f.tier, t.tier) AS direction,
                   count(*) AS referrals, count(DISTINCT r.patient) AS patients
            FROM records r LEFT JOIN tiers f ON f.org = r.from_org LEFT JOIN tiers t ON t.org = r.to_org
            WHERE r.resource_type = 'ServiceRequest' AND r.category = '{REFERRAL}'
            GROUP BY ALL ORDER BY ALL""",
    ),
    Indicator(
        "visits",
        "Visits (appointments) by tier and direction",
        ("month", "tier", "direction"),
        ("visits", "patients"),
        # The host's tier (the Slot's member, the Appointment's first Organization); a visit a referral carries
        # (basedOn) goes that referral's way (up, down, across), any other is ``direct``. Cancelled and no-show
        # appointments are no visit.
        sql=f"""
            WITH visits AS (
                SELECT month, patient, from_org AS host,
                       json_extract_string(resource, '$.basedOn[0].reference') AS based_on
                FROM records
                WHERE resource_type = 'Appointment' AND status IN ('booked', 'arrived', 'fulfilled', 'checked-in'))
            SELECT v.month, h.tier,
                   CASE WHEN s.id IS NULL THEN 'direct' ELSE direction(f.tier, t.tier) END AS direction,
                   count(*) AS visits, count(DISTINCT v.patient) AS patients
            FROM visits v LEFT JOIN tiers h ON h.org = v.host
            LEFT JOIN records s ON s.resource_type = 'ServiceRequest' AND s.category = '{REFERRAL}'
             AND v.based_on = 'ServiceRequest/' || s.id
            LEFT JOIN tiers f ON f.org = s.from_org LEFT JOIN tiers t ON t.org = s.to_org
            GROUP BY ALL ORDER BY ALL""",
    ),
    Indicator(
        "recognition",
        "Exam results recognised: tests not repeated",
        ("month",),
        ("orders", "patients", "recognised", "recognised_patients"),
        (("not_repeated_share", "recognised_patients", "patients", "recognised"),),
        ("patients", "recognised_patients"),
        sql=f"""
            WITH orders AS (
                SELECT month, patient FROM records
                WHERE resource_type = 'ServiceRequest' AND category IN {ORDERS}),
            recognised AS (
                -- In the month of the order it closed: the exchange's Tasks carry no date of their own.
                SELECT o.month, t.patient FROM records t
                JOIN records o ON o.resource_type = 'ServiceRequest' AND o.category IN {ORDERS}
                 AND json_extract_string(t.resource, '$.focus.reference') = 'ServiceRequest/' || o.id
                WHERE t.resource_type = 'Task' AND t.status = 'completed'
                  AND json_extract_string(t.resource, '$.output[0].valueReference.reference') LIKE 'DiagnosticReport/%')
            SELECT o.month, o.orders, o.patients, coalesce(g.recognised, 0) AS recognised,
                   coalesce(g.recognised_patients, 0) AS recognised_patients
            FROM (SELECT month, count(*) AS orders, count(DISTINCT patient) AS patients FROM orders GROUP BY 1) o
            LEFT JOIN (SELECT month, count(*) AS recognised, count(DISTINCT patient) AS recognised_patients
                       FROM recognised GROUP BY 1) g USING (month)
            ORDER BY 1""",
    ),
    Indicator(
        "consultations",
        "Remote consultations by specialty",
        ("month", "specialty"),
        ("consultations", "patients"),
        sql=f"""
            SELECT month, {_SPECIALTY} AS specialty, count(*) AS consultations, count(DISTINCT patient) AS patients
            FROM records WHERE resource_type = 'ServiceRequest' AND category = '{CONSULTATION}'
            GROUP BY ALL ORDER BY ALL""",
    ),
    Indicator(
        "monitoring",
        "Device-monitored patients, blood pressure and glucose controlled, by institution",
        ("institution", "month"),
        ("patients", "bp_patients", "bp_controlled", "glucose_patients", "glucose_controlled"),
        (
            ("bp_controlled_share", "bp_controlled", "bp_patients"),
            ("glucose_controlled_share", "glucose_controlled", "glucose_patients"),
        ),
        ("patients", "bp_patients", "bp_controlled", "glucose_patients", "glucose_controlled"),
        sql=f"""
            WITH readings AS (
                SELECT from_org AS institution, month, patient, systolic, diastolic,
                       CASE WHEN code IN {GLUCOSE_CODES} THEN
                           CASE WHEN json_extract_string(resource, '$.valueQuantity.code') = 'mg/dL'
                                THEN value / 18.0 ELSE value END END AS glucose,
                       json_extract_string(resource, '$.effectiveDateTime') AS taken
                FROM records WHERE resource_type = 'Observation' AND patient IS NOT NULL),
            last_bp AS (
                SELECT institution, month, patient, arg_max(systolic, taken) AS s, arg_max(diastolic, taken) AS d
                FROM readings WHERE systolic IS NOT NULL GROUP BY ALL),
            last_glucose AS (
                SELECT institution, month, patient, arg_max(glucose, taken) AS g
                FROM readings WHERE glucose IS NOT NULL GROUP BY ALL)
            SELECT p.institution, p.month, p.patients,
                   coalesce(b.bp_patients, 0) AS bp_patients, coalesce(b.bp_controlled, 0) AS bp_controlled,
                   coalesce(g.glucose_patients, 0) AS glucose_patients,
                   coalesce(g.glucose_controlled, 0) AS glucose_controlled
            FROM (SELECT institution, month, count(DISTINCT patient) AS patients FROM readings GROUP BY ALL) p
            LEFT JOIN (SELECT institution, month, count(*) AS bp_patients,
                              count(*) FILTER (WHERE s < {SYSTOLIC_CONTROLLED} AND d < {DIASTOLIC_CONTROLLED})
                                  AS bp_controlled
                       FROM last_bp GROUP BY ALL) b USING (institution, month)
            LEFT JOIN (SELECT institution, month, count(*) AS glucose_patients,
                              count(*) FILTER (WHERE g < {GLUCOSE_CONTROLLED_MMOL}) AS glucose_controlled
                       FROM last_glucose GROUP BY ALL) g USING (institution, month)
            ORDER BY ALL""",
    ),
)
BY_NAME = {i.name: i for i in INDICATORS}


def prepare(conn: duckdb.DuckDBPyConnection, tiers: Mapping[str, str]) -> None:
    """The tiers of the member hospitals (Hospital spec.tier) and the direction function, in ``conn``."""
    conn.execute("CREATE OR REPLACE TEMP TABLE tiers (org VARCHAR, tier VARCHAR)")
    if tiers:
        conn.executemany("INSERT INTO tiers VALUES (?, ?)", sorted(tiers.items()))
    conn.execute(
        "CREATE OR REPLACE TEMP MACRO direction(a, b) AS CASE "
        f"WHEN {_rank('a')} IS NULL OR {_rank('b')} IS NULL THEN 'unknown' "
        f"WHEN {_rank('b')} > {_rank('a')} THEN 'up' WHEN {_rank('b')} < {_rank('a')} THEN 'down' ELSE 'across' END"
    )


def _rank(arg: str) -> str:
    cases = " ".join(f"WHEN {arg} = '{tier}' THEN {rank}" for tier, rank in TIER_RANK.items())
    return f"(CASE {cases} END)"


def compute(conn: duckdb.DuckDBPyConnection, indicator: Indicator) -> list[dict[str, Any]]:
    """One indicator's cells over ``records``, suppressed."""
    result = conn.execute(indicator.sql)
    columns = [d[0] for d in result.description]
    return suppress([dict(zip(columns, row, strict=True)) for row in result.fetchall()], indicator)


def compute_all(conn: duckdb.DuckDBPyConnection, tiers: Mapping[str, str]) -> dict[str, list[dict[str, Any]]]:
    prepare(conn, tiers)
    return {i.name: compute(conn, i) for i in INDICATORS}
