"""The one decision point every read and search passes (HAPI's ConsentInterceptor, as a pure function).

``decide`` combines the Consortium's ``spec.sharing`` (who shares which
category with whom) with the patient's consents (when ``consentRequired`` or
the rule asks for it) and break-the-glass. It returns the (publisher, category)
pairs the reader may see; the search is restricted to them in SQL, so what is
not shareable is never read, not even counted. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from medcloud.models.consortium import ANY_MEMBER, ConsortiumSpec, SharingCategory

CATEGORIES: tuple[str, ...] = tuple(c.value for c in SharingCategory)


class Purpose(StrEnum):
    """HL7 v3 PurposeOfUse codes a caller may state (system ``http://terminology.hl7.org/CodeSystem/v3-ActReason``)."""

    TREAT = "TREAT"
    ETREAT = "ETREAT"
    COC = "COC"
    PATRQT = "PATRQT"
    HPAYMT = "HPAYMT"
    HOPERAT = "HOPERAT"


class ConsentStatus(StrEnum):
    DRAFT = "draft"
    PROPOSED = "proposed"
    ACTIVE = "active"
    REJECTED = "rejected"
    INACTIVE = "inactive"
    ENTERED_IN_ERROR = "entered-in-error"


class Basis(StrEnum):
    """Why a pair is visible (kept in the audit)."""

    OWN = "own-records"
    SHARING = "sharing-rule"
    CONSENT = "consent"
    BREAK_GLASS = "break-glass"


@dataclass(frozen=True)
class ConsentTerms:
    """A patient's Consent reduced to what the decision reads; empty sets mean "any"."""

    id: str
    status: ConsentStatus
    permit: bool
    actors: frozenset[str] = frozenset()
    purposes: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    start: datetime | None = None
    end: datetime | None = None

    def in_force(self, now: datetime) -> bool:
        return (
            self.status is ConsentStatus.ACTIVE
            and (self.start is None or self.start <= now)
            and (self.end is None or now <= self.end)
        )

    def covers(self, reader: str, purpose: str, category: str) -> bool:
        return (
            (not self.actors or reader in self.actors)
            and (not self.purposes or purpose in self.purposes)
            and (not self.categories or category in self.categories)
        )


@dataclass(frozen=True)
class AccessRequest:
    reader: str
    purpose: Purpose
    break_glass_reason: str | None = None

    @property
    def breaks_glass(self) -> bool:
        return self.purpose is Purpose.ETREAT


@dataclass(frozen=True)
class Decision:
    """The pairs the reader may see, the shareable pairs consent refused, and what the decision rested on."""

    reader: str
    permitted: frozenset[tuple[str, str]]
    refused: frozenset[tuple[str, str]]
    basis: dict[tuple[str, str], Basis] = field(default_factory=dict)
    consents: tuple[str, ...] = ()
    break_glass: bool = False
    reason: str = ""

    @property
    def shareable(self) -> frozenset[tuple[str, str]]:
        return self.permitted | self.refused

    def narrowed(self, *, publishers: Iterable[str] | None = None, categories: Iterable[str] | None = None) -> Decision:
        """The same decision limited to some publishers and categories (a search's own filters)."""
        pubs = set(publishers) if publishers is not None else None
        cats = set(categories) if categories is not None else None

        def keep(pair: tuple[str, str]) -> bool:
            return (pubs is None or pair[0] in pubs) and (cats is None or pair[1] in cats)

        return Decision(
            reader=self.reader,
            permitted=frozenset(p for p in self.permitted if keep(p)),
            refused=frozenset(p for p in self.refused if keep(p)),
            basis={p: b for p, b in self.basis.items() if keep(p)},
            consents=self.consents,
            break_glass=self.break_glass,
            reason=self.reason,
        )

    @property
    def cross_institution(self) -> frozenset[tuple[str, str]]:
        """The permitted pairs of other publishers."""
        return frozenset(p for p in self.permitted if p[0] != self.reader)

    @property
    def denied(self) -> bool:
        """Other members' records would be shareable, but consent (or its absence) permits none of them."""
        return not self.cross_institution and bool(self.refused)


class BreakGlassWithoutReasonError(ValueError):
    """Purpose ETREAT needs a reason; without one the request is refused, not downgraded."""


def _shareable_pairs(spec: ConsortiumSpec, reader: str) -> dict[tuple[str, str], list[bool]]:
    """Every (publisher, category) some rule shares with ``reader``, with the ``require_consent`` of each such rule.

    One pass over the rules (a ``*`` expands to the members): the cost grows with what is
    shared with the reader, not with members times categories times rules.
    """
    members = set(spec.members)
    pairs: dict[tuple[str, str], list[bool]] = {}
    for rule in spec.sharing:
        if ANY_MEMBER not in rule.to and reader not in rule.to:
            continue
        sources = members if ANY_MEMBER in rule.from_ else members.intersection(rule.from_)
        for publisher in sources:
            if publisher != reader:
                pairs.setdefault((publisher, rule.category.value), []).append(rule.require_consent)
    return pairs


def decide(spec: ConsortiumSpec, request: AccessRequest, consents: Iterable[ConsentTerms], now: datetime) -> Decision:
    """Which (publisher, category) pairs of one patient's records ``request.reader`` may see now."""
    if request.breaks_glass and not (request.break_glass_reason or "").strip():
        raise BreakGlassWithoutReasonError(
            "purpose of use ETREAT (break the glass) needs X-MedCloud-Break-Glass-Reason"
        )
    in_force = [c for c in consents if c.in_force(now)]
    permitted: set[tuple[str, str]] = {(request.reader, c) for c in CATEGORIES}
    refused: set[tuple[str, str]] = set()
    basis: dict[tuple[str, str], Basis] = dict.fromkeys(permitted, Basis.OWN)
    used: set[str] = set()
    for pair, requirements in sorted(_shareable_pairs(spec, request.reader).items()):
        category = pair[1]
        if not (spec.consent_required or all(requirements)):
            permitted.add(pair)
            basis[pair] = Basis.SHARING
            continue
        if request.breaks_glass:
            permitted.add(pair)
            basis[pair] = Basis.BREAK_GLASS
            continue
        covering = [c for c in in_force if c.covers(request.reader, request.purpose.value, category)]
        denies = [c.id for c in covering if not c.permit]
        permits = [c.id for c in covering if c.permit]
        if permits and not denies:
            permitted.add(pair)
            basis[pair] = Basis.CONSENT
            used.update(permits)
        else:
            refused.add(pair)
            used.update(denies)
    if request.breaks_glass:
        reason = f"break the glass: {request.break_glass_reason}"
    elif refused and all(p[0] == request.reader for p in permitted):
        reason = "no active consent of the patient permits this reader, purpose and category"
    else:
        reason = "permitted by the consortium's sharing rules and the patient's consent"
    return Decision(
        reader=request.reader,
        permitted=frozenset(permitted),
        refused=frozenset(refused),
        basis=basis,
        consents=tuple(sorted(used)),
        break_glass=request.breaks_glass,
        reason=reason,
    )
