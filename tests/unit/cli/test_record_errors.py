"""`medcloud records` failures: which are worth retrying (exit 75, EX_TEMPFAIL) and which are not (exit 1).

The exceptions are the ones the real clients raise: the key-service client
against a loopback port nobody listens on, the MinIO SDK's own error types.
"""

from __future__ import annotations

import socket

import pytest
import urllib3.exceptions
from minio.error import ServerError

from medcloud.records.keyclient import HttpKeyProvider, KeyAccessDeniedError
from medcloud.records.keys import KeyShreddedError, KeyUnavailableError, UnknownKeyVersionError
from medcloud_cli.commands.record_errors import EXIT_RETRYABLE, explain, retryable


def unreachable_key_service() -> KeyUnavailableError:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    keys = HttpKeyProvider(f"http://127.0.0.1:{port}", "hospital-city", "visits", token="t", timeout=2)
    with pytest.raises(KeyUnavailableError) as caught:
        keys.current_version()
    return caught.value


def test_the_key_service_down_is_retryable_and_says_so() -> None:
    error = unreachable_key_service()
    assert retryable(error)
    message = explain(error, store="hospital-city/visits")
    assert message is not None
    assert message.startswith("key service unreachable for hospital-city/visits")
    assert message.endswith("try again later")
    assert EXIT_RETRYABLE == 75


@pytest.mark.parametrize(
    "error",
    [
        ServerError("MinIO answered 503", 503),
        urllib3.exceptions.MaxRetryError(None, "/bucket", reason=ConnectionRefusedError("refused")),
    ],
)
def test_storage_down_is_retryable(error: Exception) -> None:
    assert retryable(error)


@pytest.mark.parametrize(
    "error",
    [
        KeyAccessDeniedError("key service refused (403): no grant"),
        UnknownKeyVersionError("key service: no version 9"),
        KeyShreddedError("key service: shredded"),
        ValueError("bad name"),
    ],
)
def test_a_refusal_or_a_lost_key_is_not_retryable(error: Exception) -> None:
    assert not retryable(error)
    message = explain(error, store="hospital-city/visits")
    assert message is not None
    assert "try again" not in message
