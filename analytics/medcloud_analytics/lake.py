"""The analytics bucket: Parquet partitioned by resource type and month, written with pyarrow and read by DuckDB.

Layout (Hive partitioning, which DuckDB, Trino and Spark all read)::

    s3://<bucket>/resource_type=Observation/month=2026-11/<batch>-0.parquet

Each load writes new files under a batch name (the export's transaction time), never overwrites one, so
a ``_since`` export adds files beside the first export's; the ``records`` view reads each resource's newest
row only (:data:`NEWEST_ROW_ONLY`). The bucket is the analytics' own: it holds
only de-identified data, and no record store's credentials can reach it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import duckdb_extension_httpfs
import pyarrow as pa
import pyarrow.dataset as ds
from pyarrow import fs

PARTITIONING = ds.partitioning(pa.schema([("resource_type", pa.string()), ("month", pa.string())]), flavor="hive")
_BATCH = re.compile(r"^[A-Za-z0-9._-]{1,80}$")


@dataclass(frozen=True)
class Lake:
    """An S3 (MinIO) bucket and the credentials of the analytics' own user."""

    endpoint: str
    """host:port"""
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)
    secure: bool = False

    def filesystem(self) -> fs.S3FileSystem:
        return fs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.endpoint,
            scheme="https" if self.secure else "http",
            region="us-east-1",
        )

    def write(self, table: pa.Table, batch: str) -> list[str]:
        """Write ``table`` partitioned by type and month as new files named after ``batch``; their paths."""
        if not _BATCH.match(batch):
            raise ValueError(f"batch name {batch!r} must be letters, digits, '.', '_' or '-'")
        written: list[str] = []
        ds.write_dataset(
            table,
            self.bucket,
            format="parquet",
            partitioning=PARTITIONING,
            filesystem=self.filesystem(),
            basename_template=f"{batch}-{{i}}.parquet",
            existing_data_behavior="overwrite_or_ignore",
            file_visitor=lambda f: written.append(f.path),
        )
        return sorted(written)

    def glob(self) -> str:
        return f"s3://{self.bucket}/*/*/*.parquet"


def httpfs_extension() -> Path:
    """The httpfs extension file the ``duckdb-extension-httpfs`` wheel ships for this DuckDB version."""
    root = Path(duckdb_extension_httpfs.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    found = root / "httpfs.duckdb_extension"
    if not found.is_file():
        raise RuntimeError(f"{found} is missing: install duckdb-extension-httpfs=={duckdb.__version__}")
    return found


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with httpfs loaded from the wheel, the bucket's secret, and a ``records`` view."""
    conn = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    conn.execute(f"LOAD '{httpfs_extension()}'")
    conn.execute(
        "CREATE SECRET lake (TYPE s3, KEY_ID $key, SECRET $secret, ENDPOINT $endpoint, URL_STYLE 'path', "
        "USE_SSL $ssl, REGION 'us-east-1')".replace("$key", _literal(lake.access_key))
        .replace("$secret", _literal(lake.secret_key))
        .replace("$endpoint", _literal(lake.endpoint))
        .replace("$ssl", "true" if lake.secure else "false")
    )
    conn.execute(
        "CREATE VIEW records AS SELECT * EXCLUDE (filename) "  # noqa: S608 - a literal
        f"FROM read_parquet({_literal(lake.glob())}, hive_partitioning = true, union_by_name = true, filename = true) "
        f"{NEWEST_ROW_ONLY}"
    )
    return conn


NEWEST_ROW_ONLY = (
    "QUALIFY row_number() OVER (PARTITION BY resource_type, id ORDER BY regexp_extract(filename, '[^/]+$') DESC) = 1"
)
"""One row per resource, its newest batch's: a resource loaded again (the scheduled writer exports everything on
each run; a ``_since`` export carries a Task or an Appointment again once it moved) counts once, as it is now.
Batch names are the exports' transaction times, so the newest file name sorts last."""


def _literal(value: str) -> str:
    """A SQL string literal (CREATE SECRET takes no parameters)."""
    return "'" + value.replace("'", "''") + "'"
