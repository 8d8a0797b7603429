"""Schema migrations: the versioned SQL files next to this module, applied in order, once each.

Plain SQL files rather than an ORM's migration tool: the schema is four tables
with no ORM behind them, every statement is reviewed as SQL, and PostgreSQL runs
DDL inside a transaction, so each file applies whole or not at all. An advisory
lock serialises exchanges that start together against one database.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import psycopg

# Any 64-bit number the exchange owns: pg_advisory_xact_lock is cluster-wide.
_LOCK_ID = 0x6D6564636C6F7564  # "medcloud"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def available() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped, in version order."""
    found = []
    for entry in resources.files(__package__ or "medcloud_exchange").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply every migration not yet applied; returns the names applied now."""
    applied_now = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migration ("
            "version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migration").fetchall()}
        for version, name, sql in available():
            if version in done:
                continue
            conn.execute(sql.encode())
            conn.execute("INSERT INTO schema_migration (version, name) VALUES (%s, %s)", (version, name))
            applied_now.append(name)
    return applied_now
