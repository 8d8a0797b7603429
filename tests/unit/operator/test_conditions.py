"""Conditions and status: set like meta.SetStatusCondition, written only when something changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from medcloud.models import (
    Condition,
    ConditionStatus,
    HospitalCondition,
    HospitalReason,
    HospitalStatus,
    KeyEncryptionKey,
    Phase,
)
from medcloud.models.conditions import Reason, find_condition, set_condition
from medcloud_operator.builders.hospital import next_status as next_hospital_status
from medcloud_operator.builders.hospital import onboarding_check, terminating_status
from medcloud_operator.status import Check, dump, merge_patch

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
TRUE, FALSE = ConditionStatus.TRUE, ConditionStatus.FALSE


def ready(status: ConditionStatus = TRUE, reason: str = "Reconciled", at: datetime = T0) -> Condition:
    return Condition(type="Ready", status=status, reason=reason, message="m", last_transition_time=at)


def test_a_new_condition_is_appended_with_the_current_time() -> None:
    result = set_condition([], "Ready", TRUE, Reason.RECONCILED, "all good", 3, T0)
    assert result == [
        Condition(
            type="Ready",
            status=TRUE,
            reason="Reconciled",
            message="all good",
            last_transition_time=T0,
            observed_generation=3,
        )
    ]


def test_same_status_keeps_the_transition_time_but_updates_reason_and_message() -> None:
    result = set_condition([ready(at=T0)], "Ready", TRUE, Reason.PROVISIONING, "new words", 4, T1)
    (cond,) = result
    assert cond.last_transition_time == T0
    assert (cond.reason, cond.message, cond.observed_generation) == ("Provisioning", "new words", 4)


def test_a_status_flip_moves_the_transition_time() -> None:
    (cond,) = set_condition([ready(TRUE, at=T0)], "Ready", FALSE, Reason.APPLY_FAILED, "x", 1, T1)
    assert cond.status is FALSE
    assert cond.last_transition_time == T1


def test_other_conditions_keep_their_place_and_value() -> None:
    other = Condition(type="KeyReady", status=TRUE, reason="Reconciled", last_transition_time=T0)
    result = set_condition([other, ready()], "Ready", FALSE, Reason.APPLY_FAILED, "x", 1, T1)
    assert [c.type for c in result] == ["KeyReady", "Ready"]
    assert result[0] is other
    assert find_condition(result, "Ready") is not None
    assert find_condition(result, "Missing") is None


def test_setting_the_input_does_not_mutate_it() -> None:
    original = [ready(TRUE, at=T0)]
    set_condition(original, "Ready", FALSE, Reason.APPLY_FAILED, "x", 1, T1)
    assert original == [ready(TRUE, at=T0)]


def all_true() -> dict[HospitalCondition, Check]:
    return {
        HospitalCondition.NAMESPACE_READY: Check(TRUE, Reason.RECONCILED, "ns"),
        HospitalCondition.NETWORK_ISOLATED: Check(TRUE, Reason.RECONCILED, "net"),
        HospitalCondition.KEY_READY: Check(TRUE, Reason.RECONCILED, "key"),
        HospitalCondition.ONBOARDED: Check(TRUE, Reason.RECONCILED, "onboarded"),
    }


KEK = KeyEncryptionKey(version=1, created_at=T0)


def reconciled(
    previous: HospitalStatus, now: datetime, checks: dict[HospitalCondition, Check] | None = None
) -> HospitalStatus:
    return next_hospital_status(
        previous,
        generation=2,
        namespace="hospital-a",
        checks=checks if checks is not None else all_true(),
        kek=KEK,
        device_ca=None,
        quota_usage={"pods": "0"},
        spec_failed=False,
        now=now,
    )


def test_all_parts_true_make_the_hospital_ready() -> None:
    status = reconciled(HospitalStatus(), T0)
    assert status.phase is Phase.READY
    assert status.observed_generation == 2
    assert status.is_ready()
    assert status.namespace == "hospital-a"
    assert status.kek == KEK
    assert [c.type for c in status.conditions] == [
        "NamespaceReady",
        "NetworkIsolated",
        "KeyReady",
        "Onboarded",
        "Ready",
    ]


def test_a_second_reconcile_with_nothing_changed_needs_no_write() -> None:
    first = reconciled(HospitalStatus(), T0)
    stored = HospitalStatus.model_validate(dump(first))  # as read back from the API server
    second = reconciled(stored, T1)
    assert merge_patch(dump(stored), dump(second)) == {}


def test_a_failing_part_makes_ready_false_with_its_reason() -> None:
    checks = all_true()
    checks[HospitalCondition.NETWORK_ISOLATED] = Check(FALSE, Reason.FORBIDDEN, "not allowed to write network policies")
    status = reconciled(HospitalStatus(), T0, checks)
    ready_cond = status.condition("Ready")
    assert ready_cond is not None
    assert (ready_cond.status, ready_cond.reason) == (FALSE, "Forbidden")
    assert ready_cond.message == "not allowed to write network policies"
    assert status.phase is Phase.PROVISIONING


def test_a_failure_after_ready_is_degraded_and_an_unrealisable_spec_is_failed() -> None:
    was_ready = reconciled(HospitalStatus(), T0)
    broken = {HospitalCondition.KEY_READY: Check(FALSE, Reason.KEK_MISSING, "gone")}
    assert reconciled(was_ready, T1, broken).phase is Phase.DEGRADED
    failed = next_hospital_status(
        HospitalStatus(),
        generation=1,
        namespace="hospital-a",
        checks={HospitalCondition.NAMESPACE_READY: Check(FALSE, Reason.INVALID_SPEC, "bad")},
        kek=None,
        device_ca=None,
        quota_usage=None,
        spec_failed=True,
        now=T0,
    )
    assert failed.phase is Phase.FAILED


def test_parts_not_reached_keep_their_previous_condition() -> None:
    was_ready = reconciled(HospitalStatus(), T0)
    status = reconciled(was_ready, T1, {HospitalCondition.NAMESPACE_READY: Check(FALSE, Reason.APPLY_FAILED, "5xx")})
    key = status.condition("KeyReady")
    assert key is not None
    assert key.status is TRUE
    assert key.last_transition_time == T0


def test_an_unfinished_onboarding_with_missing_children_is_never_ready() -> None:
    wanted = [("RecordStore", "emr"), ("DeviceGateway", "wards"), ("AppInstance", "referrals")]
    checks = all_true()
    checks[HospitalCondition.ONBOARDED] = onboarding_check(wanted, [("RecordStore", "emr")])

    status = reconciled(HospitalStatus(), T0, checks)

    onboarded = status.condition("Onboarded")
    assert onboarded is not None
    assert (onboarded.status, onboarded.reason) == (FALSE, "OnboardingIncomplete")
    assert "missing: DeviceGateway wards, AppInstance referrals" in onboarded.message
    assert not status.is_ready()
    assert status.phase is Phase.PROVISIONING
    assert onboarding_check(wanted, [*wanted, ("AppInstance", "extra")]).status is TRUE
    assert onboarding_check(None, []).status is TRUE


def test_terminating_keeps_the_rest_of_the_status() -> None:
    was_ready = reconciled(HospitalStatus(), T0)
    status = terminating_status(
        was_ready, generation=2, check=Check(FALSE, HospitalReason.RECORD_STORES_PRESENT, "2 remain"), now=T1
    )
    assert status.phase is Phase.TERMINATING
    assert status.kek == KEK
    ready_cond = status.condition("Ready")
    assert ready_cond is not None
    assert (ready_cond.reason, ready_cond.last_transition_time) == ("RecordStoresPresent", T1)


def test_merge_patch_is_minimal_and_nulls_removed_keys() -> None:
    old = {"phase": "Ready", "quotaUsage": {"pods": "1", "requests.cpu": "1"}, "conditions": [{"type": "Ready"}]}
    new = {"phase": "Ready", "quotaUsage": {"pods": "2"}, "conditions": [{"type": "Ready"}]}
    assert merge_patch(old, new) == {"quotaUsage": {"pods": "2", "requests.cpu": None}}
    assert merge_patch(new, new) == {}
    assert merge_patch({}, {"phase": "Pending"}) == {"phase": "Pending"}
