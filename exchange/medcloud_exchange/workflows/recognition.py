"""The Consortium's rule of exam-result mutual recognition, as pure functions.

A result is recognised when its producer's tier is one the Consortium lists, the producer is accredited
(when the Consortium asks for it), and the report was issued within the validity window of its test (a
window for its LOINC code wins over one for its diagnostic service section). No window: not recognised.
Apps do not decide this; the exchange does, with the Consortium's spec and the producers' Hospitals.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from medcloud.models.consortium import ExamRecognition
from medcloud.models.hospital import Tier


@dataclass(frozen=True)
class Producer:
    """What the rule reads of a producing member's Hospital."""

    tier: Tier
    accredited: bool


@dataclass(frozen=True)
class Candidate:
    """An indexed final result of this patient and test."""

    id: uuid.UUID
    publisher: str
    test_code: str
    categories: tuple[str, ...]
    issued: datetime


def window(rule: ExamRecognition, test_code: str, categories: Iterable[str]) -> timedelta | None:
    """How long a result of this test stays recognised; None when the Consortium gives it no window."""
    for item in rule.windows:
        if item.test == test_code:
            return timedelta(days=item.days)
    sections = set(categories)
    days = [item.days for item in rule.windows if item.category is not None and item.category in sections]
    return timedelta(days=min(days)) if days else None


def longest_window(rule: ExamRecognition, test_code: str) -> timedelta | None:
    """The widest window any result of this test could have: the lookup's bound in SQL."""
    own = [item.days for item in rule.windows if item.test == test_code]
    if own:
        return timedelta(days=own[0])
    days = [item.days for item in rule.windows if item.category is not None]
    return timedelta(days=max(days)) if days else None


def not_recognised(rule: ExamRecognition, candidate: Candidate, producer: Producer | None, now: datetime) -> str | None:
    """Why this result is not recognised now; None when it is."""
    if producer is None:
        return f"{candidate.publisher} is no longer a Hospital of the cluster"
    if producer.tier not in rule.producer_tiers:
        return f"results of {producer.tier.value} institutions are not recognised by the Consortium"
    if rule.require_accreditation and not producer.accredited:
        return f"{candidate.publisher} is not accredited for exam results (spec.examAccredited)"
    valid_for = window(rule, candidate.test_code, candidate.categories)
    if valid_for is None:
        return f"the Consortium gives test {candidate.test_code} no recognition window"
    if candidate.issued + valid_for < now:
        return f"issued {candidate.issued.date().isoformat()}, outside its {valid_for.days}-day window"
    if candidate.issued > now:
        return "issued in the future"
    return None


def recognised(
    rule: ExamRecognition, candidates: Iterable[Candidate], producers: Mapping[str, Producer | None], now: datetime
) -> list[Candidate]:
    """The recognised results, newest first."""
    kept = [c for c in candidates if not_recognised(rule, c, producers.get(c.publisher), now) is None]
    return sorted(kept, key=lambda c: (c.issued, str(c.id)), reverse=True)
