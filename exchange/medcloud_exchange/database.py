"""The index database: a small connection pool, and the schema brought up to date before first use.

The exchange starts even while PostgreSQL is down (it answers 503 meanwhile);
the migrations run on the first request that gets a connection.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from medcloud_exchange.migrations import migrate

# A 201 promises the document is indexed: the commit must be on disk (in the WAL) before the answer, whatever
# the server's default. A server run with synchronous_commit=off (a development server, or a tuned one) would
# otherwise lose the last acknowledged publishes in a crash while their payloads stay in MinIO (docs/drills.md).
DURABLE_COMMIT = "-c synchronous_commit=on"


class Database:
    def __init__(self, url: str, timeout: float, max_size: int = 8) -> None:
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            open=False,
            # A connection broken by a database restart is replaced, not handed out.
            check=ConnectionPool.check_connection,
            kwargs={"connect_timeout": max(1, int(timeout)), "options": DURABLE_COMMIT},
            reconnect_timeout=0,
        )
        self._migrated = False
        self._lock = threading.Lock()

    def open(self) -> None:
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection from the pool, the schema migrated; raises psycopg/pool errors when the database is down."""
        with self._pool.connection() as conn:
            if not self._migrated:
                with self._lock:
                    if not self._migrated:
                        migrate(conn)
                        self._migrated = True
            yield conn

    def reachable(self, timeout: float) -> bool:
        """Whether a connection answers within ``timeout`` seconds: the exchange's readiness for its metrics."""
        try:
            with self._pool.connection(timeout=timeout) as conn:
                conn.execute("SELECT 1")
        except (psycopg.Error, OSError):
            return False
        return True

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection inside one transaction: committed when the block ends, rolled back when it raises."""
        with self.connection() as conn, conn.transaction():
            yield conn
