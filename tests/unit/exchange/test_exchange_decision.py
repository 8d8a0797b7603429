"""The decision point, without servers: sharing rules AND consent, deny wins, break the glass."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from medcloud.models.consortium import ConsortiumSpec
from medcloud_exchange.decision import (
    AccessRequest,
    Basis,
    BreakGlassWithoutReasonError,
    ConsentStatus,
    ConsentTerms,
    Purpose,
    decide,
)

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def spec(consent_required: bool = True, **rule: object) -> ConsortiumSpec:
    sharing = [{"category": "emr", "from": ["county"], "to": ["city"], **rule}]
    return ConsortiumSpec.model_validate(
        {
            "displayName": "Riverton",
            "leadHospital": "city",
            "members": ["city", "county", "village"],
            "consentRequired": consent_required,
            "sharing": sharing,
        }
    )


def permit(**terms: object) -> ConsentTerms:
    values: dict[str, object] = {"id": "c1", "status": ConsentStatus.ACTIVE, "permit": True, **terms}
    return ConsentTerms(**values)


def city(purpose: Purpose = Purpose.TREAT, reason: str | None = None) -> AccessRequest:
    return AccessRequest("city", purpose, reason)


def test_without_consent_a_shared_category_is_refused_and_own_records_stay_visible() -> None:
    decision = decide(spec(), city(), [], NOW)
    assert decision.denied
    assert ("county", "emr") in decision.refused
    assert ("city", "emr") in decision.permitted
    assert decision.basis[("city", "emr")] is Basis.OWN
    assert not decision.cross_institution


def test_an_active_consent_for_reader_purpose_and_category_permits() -> None:
    decision = decide(spec(), city(), [permit(actors=frozenset({"city"}), purposes=frozenset({"TREAT"}))], NOW)
    assert decision.cross_institution == {("county", "emr")}
    assert decision.basis[("county", "emr")] is Basis.CONSENT
    assert decision.consents == ("c1",)
    assert not decision.denied


@pytest.mark.parametrize(
    "terms",
    [
        {"actors": frozenset({"village"})},
        {"purposes": frozenset({"HPAYMT"})},
        {"categories": frozenset({"imaging"})},
        {"status": ConsentStatus.INACTIVE},
        {"end": NOW - timedelta(seconds=1)},
        {"start": NOW + timedelta(days=1)},
    ],
    ids=["other-actor", "other-purpose", "other-category", "revoked", "expired", "not-yet"],
)
def test_a_consent_that_does_not_cover_the_request_permits_nothing(terms: dict[str, object]) -> None:
    assert decide(spec(), city(), [permit(**terms)], NOW).denied


def test_a_matching_deny_wins_over_a_permit() -> None:
    deny = permit(id="c2", permit=False, actors=frozenset({"city"}))
    decision = decide(spec(), city(), [permit(), deny], NOW)
    assert decision.denied
    assert decision.consents == ("c2",)


def test_a_category_outside_sharing_is_neither_permitted_nor_refused() -> None:
    decision = decide(spec(), city(), [permit()], NOW)
    assert ("county", "imaging") not in decision.shareable
    village = decide(spec(), AccessRequest("village", Purpose.TREAT), [permit()], NOW)
    assert not village.cross_institution
    assert not village.refused
    assert not village.denied


def test_consent_is_not_asked_when_neither_the_consortium_nor_the_rule_requires_it() -> None:
    decision = decide(spec(consent_required=False, requireConsent=False), city(), [], NOW)
    assert decision.basis[("county", "emr")] is Basis.SHARING


def test_break_the_glass_needs_a_reason_and_never_widens_sharing() -> None:
    with pytest.raises(BreakGlassWithoutReasonError):
        decide(spec(), city(Purpose.ETREAT), [], NOW)
    with pytest.raises(BreakGlassWithoutReasonError):
        decide(spec(), city(Purpose.ETREAT, "  "), [], NOW)
    decision = decide(spec(), city(Purpose.ETREAT, "unconscious"), [], NOW)
    assert decision.break_glass
    assert decision.basis[("county", "emr")] is Basis.BREAK_GLASS
    assert ("county", "imaging") not in decision.permitted
    assert "unconscious" in decision.reason


def test_narrowing_keeps_only_the_searched_publishers_and_categories() -> None:
    decision = decide(spec(), city(), [permit()], NOW)
    assert decision.narrowed(categories=["imaging"]).cross_institution == frozenset()
    assert not decision.narrowed(categories=["imaging"]).denied
    assert decision.narrowed(publishers=["county"]).permitted == {("county", "emr")}


def test_who_publishes_is_who_some_rule_shares_from() -> None:
    assert spec().publishers() == ["county"]
    assert spec().shares("county", "emr")
    assert not spec().shares("county", "imaging")
    assert not spec().shares("city", "emr")
    everyone = ConsortiumSpec.model_validate(
        {
            "displayName": "R",
            "leadHospital": "a",
            "members": ["a", "b"],
            "sharing": [{"category": "emr", "from": ["*"], "to": ["a"]}],
        }
    )
    assert everyone.publishers() == ["a", "b"]
