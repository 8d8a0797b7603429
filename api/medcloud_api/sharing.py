"""What each member of a consortium shares with whom: the sharing rules with ``*`` expanded.

Pure: a consortium spec in, per-member flows out. A hospital never "shares"
with itself, so a rule from * to * gives each member every other member.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medcloud_api.schemas import Flow

ANY_MEMBER = "*"


@dataclass
class MemberFlows:
    shares: dict[tuple[str, bool], set[str]] = field(default_factory=dict)
    receives: dict[tuple[str, bool], set[str]] = field(default_factory=dict)


def _expand(names: Sequence[str], members: Sequence[str]) -> list[str]:
    if ANY_MEMBER in names:
        return list(members)
    return [n for n in names if n in members]


def member_flows(spec: Mapping[str, Any]) -> dict[str, tuple[list[Flow], list[Flow]]]:
    """member -> (flows its records take, flows it may read), each sorted by category."""
    members = [str(m) for m in spec.get("members") or []]
    flows = {m: MemberFlows() for m in members}
    for rule in spec.get("sharing") or []:
        category = str(rule.get("category"))
        consent = bool(rule.get("requireConsent", True))
        senders = _expand(rule.get("from") or [], members)
        readers = _expand(rule.get("to") or [], members)
        for sender in senders:
            for reader in readers:
                if sender == reader:
                    continue
                flows[sender].shares.setdefault((category, consent), set()).add(reader)
                flows[reader].receives.setdefault((category, consent), set()).add(sender)

    def as_flows(table: dict[tuple[str, bool], set[str]]) -> list[Flow]:
        return [
            Flow(category=category, hospitals=sorted(names), require_consent=consent)
            for (category, consent), names in sorted(table.items())
        ]

    return {m: (as_flows(f.shares), as_flows(f.receives)) for m, f in flows.items()}
