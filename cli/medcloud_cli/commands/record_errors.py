"""What a `medcloud records` failure says: one line a person can act on, never a traceback.

The storage, key-service and Kubernetes clients each raise their own
exceptions; :func:`explain` turns the ones a user can meet (a record that was
never written, MinIO down, a kubeconfig that does not load) into a sentence,
and the command prints ``error: <sentence>`` and exits 1.
"""

from __future__ import annotations

import urllib3.exceptions
from kubernetes.config.config_exception import ConfigException
from minio.error import MinioException, S3Error, ServerError

from medcloud.records.keys import RecordCryptoError

MISSING_CODES = frozenset({"NoSuchKey", "NoSuchVersion"})


class RecordsCommandError(RuntimeError):
    """Something the user can fix: the message says what."""


def _reason(exc: urllib3.exceptions.HTTPError) -> str:
    # MaxRetryError wraps the connection error that says what happened ("Connection refused").
    cause = getattr(exc, "reason", None) or exc
    text = str(cause)
    return text.split(": ", 1)[-1] if isinstance(cause, urllib3.exceptions.NewConnectionError) else text


def explain(exc: BaseException, *, store: str, record: str | None = None) -> str | None:
    """The one-line message for ``exc``, or None for an exception no user can cause (a bug: let it show)."""
    if isinstance(exc, S3Error):
        if exc.code in MISSING_CODES and record is not None:
            return f"no record {record} in RecordStore {store} (that name, or that version, was never written)"
        return f"the store {store} refused the request: {exc.code}: {exc.message}"
    if isinstance(exc, ServerError):
        return f"the store {store} failed the request (HTTP {exc.status_code}); try again later"
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return f"cannot reach the store {store}: {_reason(exc)}; is MinIO running?"
    if isinstance(exc, MinioException):
        return f"unexpected answer from the store {store}: {exc}"
    if isinstance(exc, ConfigException):
        return f"cannot load the kubeconfig: {exc}"
    if isinstance(exc, RecordsCommandError | RecordCryptoError | OSError | ValueError):
        return str(exc)
    return None
