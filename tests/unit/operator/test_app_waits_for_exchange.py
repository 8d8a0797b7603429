"""An exchange-client app waits for its consortium's exchange: what the handler reads, and the reason it gives."""

from __future__ import annotations

from medcloud.models.workload import WorkloadReason
from medcloud_operator.handlers import workload
from medcloud_operator.handlers.appinstance import EXCHANGE_RECHECK_SECONDS, exchange_not_ready, exchange_of

HOSPITAL = {"spec": {"consortium": "metro"}}


def test_a_hospital_in_no_consortium_waits_for_nothing() -> None:
    assert exchange_of({"spec": {}}, None) == (None, None)
    assert exchange_of(None, None) == (None, None)


def test_a_consortium_without_an_exchange_endpoint_yet_is_named_with_no_url() -> None:
    assert exchange_of(HOSPITAL, None) == ("metro", None)
    assert exchange_of(HOSPITAL, {"status": {}}) == ("metro", None)
    assert exchange_of(HOSPITAL, {"status": {"exchange": {"publishers": []}}}) == ("metro", None)


def test_the_url_is_the_endpoint_without_its_fhir_path() -> None:
    consortium = {"status": {"exchange": {"endpoint": "http://medcloud-exchange-metro.medcloud-system.svc/fhir"}}}
    assert exchange_of(HOSPITAL, consortium) == ("metro", "http://medcloud-exchange-metro.medcloud-system.svc")


def test_waiting_is_a_retried_not_ready_never_a_failure() -> None:
    error = exchange_not_ready("referrals", "metro")
    assert error.reason == WorkloadReason.EXCHANGE_NOT_READY
    assert "Consortium metro" in error.message
    assert "status.exchange.endpoint" in error.message
    assert error.permanent is False
    assert error.delay == EXCHANGE_RECHECK_SECONDS
    assert workload.classify(error) is error
    assert error.reason not in workload.UNREALISABLE
