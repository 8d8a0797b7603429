"""The institution-code index: who claims which code, and who holds it, from watch events alone."""

from __future__ import annotations

from medcloud_operator.institutions import InstitutionCodes


def hospital(name: str, code: str, created: str) -> dict[str, object]:
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": {"institutionCode": code}}


def test_the_oldest_claimant_holds_a_code_and_a_tie_goes_to_the_first_name() -> None:
    codes = InstitutionCodes()
    codes.observe(hospital("young", "C1", "2026-01-02T00:00:00Z"))
    codes.observe(hospital("old", "C1", "2026-01-01T00:00:00Z"))
    codes.observe(hospital("b-twin", "C2", "2026-01-01T00:00:00Z"))
    codes.observe(hospital("a-twin", "C2", "2026-01-01T00:00:00Z"))
    assert codes.holder("C1") == "old"
    assert codes.holder("C2") == "a-twin"
    assert codes.holder("C3") is None
    assert codes.claimants("C1") == ["old", "young"]


def test_a_deleted_holder_frees_the_code_for_the_next_claimant() -> None:
    codes = InstitutionCodes()
    codes.observe(hospital("old", "C1", "2026-01-01T00:00:00Z"))
    codes.observe(hospital("young", "C1", "2026-01-02T00:00:00Z"))
    codes.forget("old")
    assert codes.holder("C1") == "young"
    codes.forget("young")
    assert codes.holder("C1") is None
    assert len(codes) == 0


def test_a_changed_code_moves_the_claim() -> None:
    codes = InstitutionCodes()
    codes.observe(hospital("h", "C1", "2026-01-01T00:00:00Z"))
    codes.observe(hospital("h", "C2", "2026-01-01T00:00:00Z"))
    assert codes.holder("C1") is None
    assert codes.holder("C2") == "h"
    assert len(codes) == 1
