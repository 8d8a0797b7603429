"""What a `medcloud records` failure says: one line a person can act on, never a traceback.

The storage, key-service and Kubernetes clients each raise their own
exceptions; :func:`explain` turns the ones a user can meet (a record that was
never written, MinIO down, a kubeconfig that does not load) into a sentence,
and the command prints ``error: <sentence>`` and exits 1, or
:data:`EXIT_RETRYABLE` when the same command may succeed later unchanged (MinIO
or the key service down: what a script or a cron job should retry).
"""

from __future__ import annotations

import urllib3.exceptions
from kubernetes.config.config_exception import ConfigException
from minio.error import MinioException, S3Error, ServerError

from medcloud.records.keyclient import KeyAccessDeniedError
from medcloud.records.keys import KeyShreddedError, KeyUnavailableError, RecordCryptoError, UnknownKeyVersionError

MISSING_CODES = frozenset({"NoSuchKey", "NoSuchVersion"})
EXIT_RETRYABLE = 75
"""EX_TEMPFAIL (sysexits.h): a temporary failure; nothing was written, and the same command may be run again."""


class RecordsCommandError(RuntimeError):
    """Something the user can fix: the message says what."""


def _reason(exc: urllib3.exceptions.HTTPError) -> str:
    # MaxRetryError wraps the connection error that says what happened ("Connection refused").
    cause = getattr(exc, "reason", None) or exc
    text = str(cause)
    return text.split(": ", 1)[-1] if isinstance(cause, urllib3.exceptions.NewConnectionError) else text


def retryable(exc: BaseException) -> bool:
    """A dependency that is down rather than a request that is wrong: storage unreachable or failing (5xx), or
    the key service unreachable or failing. A refusal (401/403), an unknown key version or a shredded store is not."""
    if isinstance(exc, KeyAccessDeniedError | UnknownKeyVersionError | KeyShreddedError):
        return False
    return isinstance(exc, KeyUnavailableError | ServerError | urllib3.exceptions.HTTPError)


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
    if isinstance(exc, KeyUnavailableError) and retryable(exc):
        return f"{exc}; try again later"
    if isinstance(exc, ConfigException):
        return f"cannot load the kubeconfig: {exc}"
    if isinstance(exc, RecordsCommandError | RecordCryptoError | OSError | ValueError):
        return str(exc)
    return None
