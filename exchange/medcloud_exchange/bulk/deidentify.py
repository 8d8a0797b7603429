"""Safe Harbor de-identification of FHIR resources, as pure functions (the policy: medcloud.models.deidentification).

One walk over a resource's JSON, field by field, decides each element:

* direct identifiers (``identifier``, ``subscriberId``, ``telecom``, ``photo``, a person's ``name``,
  ``contact``, ``address`` but for the retained parts) and free text (``text``, ``note``, ``comment``,
  ``description``, a Communication's ``payload``, ``patientInstruction``, ``Reference.display``, an
  Attachment's ``data``/``url``/``title``/``hash``) are dropped;
* ``id`` and every relative reference ``Type/id`` become ``Type/<pseudonym>``: HMAC-SHA-256 under the
  purpose's key, so the same patient is the same pseudonym in every export of one purpose and a
  different one in another purpose's; ``Organization/<member>`` stays (the institution is what the
  indicators count by), absolute references and contained ``#`` ones lose or keep their target accordingly;
* every date, dateTime and instant is reduced to its month or shifted by the patient's keyed offset;
* ``Patient.birthDate`` becomes an age band extension (90 and over in one band);
* extensions are kept only when they are MedCloud's own or data-absent-reason, and primitive
  extensions (``_birthDate``: the birth time) are dropped;
* an element emptied by all this (a required ``Observation.code`` whose only content was free text)
  becomes a data-absent-reason ``masked`` extension, so the resource stays valid FHIR.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from medcloud.models.deidentification import DateHandling, DeidentificationPolicy

AGE_BAND_URL = "https://medcloud.io/fhir/StructureDefinition/age-band"
DATA_ABSENT_URL = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
KEPT_EXTENSION_PREFIXES = ("https://medcloud.io/fhir/", DATA_ABSENT_URL)
TOP_AGE = 90
"""Safe Harbor: ages over 89 are aggregated into one category."""

PERSON_TYPES = frozenset({"Patient", "Practitioner", "RelatedPerson", "Person"})
UNPSEUDONYMISED_TYPES = frozenset({"Organization"})
"""Reference targets kept as they are: member hospitals, which are not persons."""

_ALWAYS_DROPPED = frozenset(
    {
        "identifier",
        "subscriberId",
        "telecom",
        "photo",
        "text",
        "note",
        "comment",
        "description",
        "hash",
        "payload",
        "patientInstruction",
        "modifierExtension",
    }
)
_PERSON_DROPPED = frozenset({"name", "contact", "birthDate"})
_ATTACHMENT_DROPPED = frozenset({"data", "url", "title"})
_NOT_DATES = frozenset({"code", "system", "version", "reference", "id", "value", "unit"})
_DATE_RE = re.compile(
    r"^(?P<year>\d{4})-(?P<month>\d{2})(-(?P<day>\d{2})"
    r"(T(?P<time>\d{2}:\d{2}(:\d{2}(\.\d+)?)?)(?P<tz>Z|[+-]\d{2}:\d{2}))?)?$"
)
_RELATIVE_REFERENCE_RE = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(/_history/.*)?$")

_PURPOSE_LABEL = b"medcloud/bulk-export/pseudonym-key\x00"
_SHIFT_LABEL = b"date-shift\x00"


def purpose_key(consortium_key: bytes, purpose: str) -> bytes:
    """The pseudonym key of one export purpose, derived from the consortium key (never stored, never exported)."""
    return hmac.new(consortium_key, _PURPOSE_LABEL + purpose.encode(), hashlib.sha256).digest()


def pseudonym(key: bytes, resource_type: str, resource_id: str) -> str:
    """A keyed pseudonym for ``resource_type/resource_id``: 40 hex digits, a valid FHIR id."""
    return hmac.new(key, f"{resource_type}/{resource_id}".encode(), hashlib.sha256).hexdigest()[:40]


def shift_days(key: bytes, patient: str, max_days: int) -> int:
    """The patient's date offset in days, in [-max_days, max_days] and never 0, the same in every export."""
    digest = hmac.new(key, _SHIFT_LABEL + patient.encode(), hashlib.sha256).digest()
    offset = int.from_bytes(digest[:8], "big") % (2 * max_days) - max_days
    return offset if offset < 0 else offset + 1


def masked() -> dict[str, Any]:
    """An element whose content was withheld: only a data-absent-reason ``masked`` extension."""
    return {"extension": [{"url": DATA_ABSENT_URL, "valueCode": "masked"}]}


def age_band(birth: date, on: date, width: int) -> tuple[int, int | None]:
    """The age band, in whole years, of someone born on ``birth`` on the day ``on``; 90+ has no upper bound."""
    age = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    if age >= TOP_AGE:
        return TOP_AGE, None
    low = max(0, age) // width * width
    return low, min(low + width - 1, TOP_AGE - 1)


def age_band_extension(band: tuple[int, int | None]) -> dict[str, Any]:
    """The age band as a FHIR extension holding a Range in years (UCUM ``a``)."""
    low, high = band
    value: dict[str, Any] = {"low": _years(low)}
    if high is not None:
        value["high"] = _years(high)
    return {"url": AGE_BAND_URL, "valueRange": value}


def _years(n: int) -> dict[str, Any]:
    return {"value": n, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}


def reduce_date(value: str, handling: DateHandling, offset_days: int) -> str | None:
    """A FHIR date/dateTime/instant de-identified, or None when ``value`` is not one (left as it is).

    Month: ``2026-11-17`` -> ``2026-11``; a value with a time -> the first of its month at 00:00Z
    (still a valid instant). Shift: moved by ``offset_days``, precision and time zone kept.
    """
    match = _DATE_RE.match(value)
    if match is None:
        return None
    year, month = int(match["year"]), int(match["month"])
    if not 1 <= month <= 12:
        return None
    if handling is DateHandling.MONTH:
        return f"{year:04d}-{month:02d}-01T00:00:00Z" if match["time"] else f"{year:04d}-{month:02d}"
    if match["day"] is None:
        # A month cannot be shifted by days without inventing a day; it is already coarse.
        return f"{year:04d}-{month:02d}"
    if match["time"] is None:
        return (date(year, month, int(match["day"])) + timedelta(days=offset_days)).isoformat()
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")) + timedelta(days=offset_days)
    text = moment.isoformat()
    return text.replace("+00:00", "Z") if match["tz"] == "Z" else text


@dataclass(frozen=True)
class Deidentifier:
    """The policy applied for one export: its purpose's key and the day the export runs (for age bands)."""

    policy: DeidentificationPolicy
    key: bytes
    today: date

    @classmethod
    def for_purpose(
        cls, policy: DeidentificationPolicy, consortium_key: bytes, purpose: str, today: date | None = None
    ) -> Deidentifier:
        if policy.purpose(purpose) is None:
            raise ValueError(f"the consortium's de-identification policy has no purpose {purpose!r}")
        return cls(policy, purpose_key(consortium_key, purpose), today or datetime.now(UTC).date())

    def patient_pseudonym(self, patient: str) -> str:
        return pseudonym(self.key, "Patient", patient)

    def resource(self, resource: Mapping[str, Any], patient: str | None = None) -> dict[str, Any]:
        """``resource`` de-identified; ``patient`` (the exchange's patient id) keys the date shift."""
        offset = shift_days(self.key, patient or "", self.policy.date_shift_max_days)
        return _Walk(self, offset).resource(resource)


@dataclass(frozen=True)
class _Walk:
    deid: Deidentifier
    offset: int

    def resource(self, resource: Mapping[str, Any], contained: bool = False) -> dict[str, Any]:
        rtype = str(resource.get("resourceType", ""))
        out: dict[str, Any] = {"resourceType": rtype}
        rid = resource.get("id")
        if isinstance(rid, str):
            # A contained resource's id is local ("#p1" points at it) and names nothing outside.
            keep = contained or rtype in UNPSEUDONYMISED_TYPES
            out["id"] = rid if keep else pseudonym(self.deid.key, rtype, rid)
        body = self.element(resource, rtype, rtype)
        out.update(body if isinstance(body, dict) and "resourceType" not in body else {})
        if rtype == "Patient" and isinstance(resource.get("birthDate"), str):
            born = _birth_date(resource["birthDate"])
            if born is not None:
                band = age_band(born, self.deid.today, self.deid.policy.age_band_years)
                out.setdefault("extension", []).append(age_band_extension(band))
        return out

    def element(self, value: Any, rtype: str, path: str) -> Any:
        """De-identify one element; returns None when nothing of it may leave."""
        if isinstance(value, list):
            items = [self.element(item, rtype, path) for item in value]
            kept = [item for item in items if item is not None]
            return kept or None
        if isinstance(value, dict):
            return self.complex(value, rtype, path)
        if isinstance(value, str) and path.rsplit(".", 1)[-1] not in _NOT_DATES:
            reduced = reduce_date(value, self.deid.policy.dates, self.offset)
            return value if reduced is None else reduced
        return value

    def complex(self, value: Mapping[str, Any], rtype: str, path: str) -> dict[str, Any] | None:
        if "resourceType" in value and path != rtype:
            return self.resource(value, contained=True)  # a contained resource: its own type's rules
        is_attachment = "contentType" in value or "data" in value
        out: dict[str, Any] = {}
        for key, child in value.items():
            child_path = f"{path}.{key}"
            if key in {"resourceType", "id"} and path == rtype:
                continue
            if self.dropped(key, child_path, rtype, value, is_attachment):
                continue
            if key == "reference" and isinstance(child, str):
                reference = self.reference(child)
                if reference is not None:
                    out[key] = reference
                continue
            if key == "extension" and isinstance(child, list):
                child = [e for e in child if isinstance(e, dict) and _kept_extension(e)]
            kept = self.element(child, rtype, child_path)
            if kept is not None:
                out[key] = kept
        if rtype in PERSON_TYPES and path.endswith(".address") and out:
            out = {k: v for k, v in out.items() if f"{rtype}.address.{k}" in self.deid.policy.retain}
        if out or not value or path == rtype:
            return out or None
        # Something was there and none of it may leave: say so in FHIR's words, keeping the element valid
        # (a required Observation.code whose only content was text, a subject named by identifier only).
        return masked()

    def dropped(self, key: str, path: str, rtype: str, parent: Mapping[str, Any], is_attachment: bool) -> bool:
        if path in self.deid.policy.retain:
            return False
        if key.startswith("_"):
            return True  # primitive extensions: the birth time, an own-prefix of a family name
        if key in _ALWAYS_DROPPED:
            return True
        if rtype in PERSON_TYPES and path.count(".") == 1 and key in _PERSON_DROPPED:
            return True
        if key == "address" and rtype in PERSON_TYPES:
            return not any(p.startswith(f"{rtype}.address.") for p in self.deid.policy.retain)
        if key == "display" and "code" not in parent and "system" not in parent:
            return True  # Reference.display (a name), not Coding.display (the code system's wording)
        return is_attachment and key in _ATTACHMENT_DROPPED

    def reference(self, reference: str) -> str | None:
        if reference.startswith("#"):
            return reference
        match = _RELATIVE_REFERENCE_RE.match(reference)
        if match is None:
            return None  # absolute or logical: the target is outside the export and may name the patient
        target = match["type"]
        if target in UNPSEUDONYMISED_TYPES:
            return f"{target}/{match['id']}"
        return f"{target}/{pseudonym(self.deid.key, target, match['id'])}"


def _kept_extension(extension: Mapping[str, Any]) -> bool:
    return str(extension.get("url", "")).startswith(KEPT_EXTENSION_PREFIXES)


def _birth_date(value: str) -> date | None:
    parts = value.split("-")
    try:
        year = int(parts[0])
        month = int(parts[1]) if len(parts) > 1 else 7
        day = int(parts[2][:2]) if len(parts) > 2 else 1
        return date(year, month, day)
    except (ValueError, IndexError):
        return None
