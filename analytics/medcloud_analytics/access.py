"""Who may touch the analytics bucket, as MinIO (S3) policies: pure (docs/analytics.md).

Two users, each with its policy on this bucket alone:

- the analytics' own (``medcloud analytics load`` / ``publish``): put, get and list its bucket's objects
  (pyarrow writes, DuckDB reads); no delete, no bucket settings, no other bucket;
- the control API's dashboard reader: get the published document (``dashboard/indicators.json``) and
  nothing else (but the bucket's region): not the Parquet, not a list of what is there.

Neither can reach a RecordStore: the lake holds only de-identified data, and its users hold no record
store's credentials.
"""

from __future__ import annotations

from typing import Any

from medcloud_analytics.dashboard import DOCUMENT_KEY

POLICY_VERSION = "2012-10-17"


def writer_policy(bucket: str) -> dict[str, Any]:
    """The analytics' own user: its bucket's objects put, got and listed."""
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject"], "Resource": [f"arn:aws:s3:::{bucket}/*"]},
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
            },
        ],
    }


def dashboard_reader_policy(bucket: str) -> dict[str, Any]:
    """The control API's key: the published dashboard document alone."""
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{bucket}/{DOCUMENT_KEY}"]},
            # S3 clients ask the bucket's region before the first request; it says nothing of the contents.
            {"Effect": "Allow", "Action": ["s3:GetBucketLocation"], "Resource": [f"arn:aws:s3:::{bucket}"]},
        ],
    }
