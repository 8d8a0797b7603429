"""Sharding by label selector: which MedCloud objects this replica serves (``MEDCLOUD_SHARD_SELECTOR``).

The selector is sent to the API server with every watch of the MedCloud kinds
(Kopf's ``settings.watching.label_selectors``), so a replica never even
receives another shard's objects. Children, and the Hospitals a Consortium
counts, are watched whole; a reconcile that such an event triggers reads its
object first, and this module's :func:`matches` keeps it from acting on an
object of another shard. Equality-based selectors only (``k=v``, ``k==v``,
``k!=v``, ``k``, ``!k``, comma-separated): they are all a shard needs, and the
local test must agree exactly with the API server's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_REQUIREMENT = re.compile(rf"^(?P<not>!)?(?P<key>{_KEY})(\s*(?P<op>==|!=|=)\s*(?P<value>{_VALUE}))?$")


class SelectorError(ValueError):
    """Not an equality-based label selector."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "exists":
            return self.key in labels
        if self.operator == "!exists":
            return self.key not in labels
        if self.operator == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


def parse(selector: str) -> tuple[Requirement, ...]:
    """The requirements of ``selector``; raises :class:`SelectorError` on anything but the equality-based forms."""
    requirements = []
    for part in (p.strip() for p in selector.split(",")):
        found = _REQUIREMENT.match(part)
        if not part or found is None or (found["not"] and found["op"]):
            raise SelectorError(f"not an equality-based label selector: {part!r} in {selector!r}")
        if found["op"] is None:
            requirements.append(Requirement(found["key"], "!exists" if found["not"] else "exists"))
        else:
            operator = "!=" if found["op"] == "!=" else "="
            requirements.append(Requirement(found["key"], operator, found["value"] or ""))
    return tuple(requirements)


def matches(selector: str | None, labels: Mapping[str, str] | None) -> bool:
    """Whether an object with ``labels`` belongs to the shard ``selector`` names (no selector: every object)."""
    if not selector:
        return True
    return all(r.holds(labels or {}) for r in parse(selector))
