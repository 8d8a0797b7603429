"""What an onboarding asked for, written on the Hospital before anything else.

The control API creates a Hospital and then, one by one, its RecordStores,
DeviceGateways and AppInstances. Should it stop part-way (a crash, a lost
connection), the Hospital alone cannot tell that anything is missing. So the
API writes the children it is about to create into the Hospital's
``medcloud.io/onboarding`` annotation, as part of creating the Hospital, and
removes the annotation once all of them exist. While the annotation is there
the operator checks each listed child and reports the Hospital's ``Onboarded``
condition False, reason ``OnboardingIncomplete``, naming what is missing:
never Ready. Repeating the onboarding request creates the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

ANNOTATION = "medcloud.io/onboarding"
KINDS = ("RecordStore", "DeviceGateway", "AppInstance")

Child = tuple[str, str]
"""(kind, name) of an object in the hospital's namespace."""


def annotation_value(children: Iterable[Child]) -> str:
    """The annotation for these children: ``{"RecordStore": ["emr"], ...}``, kinds and names sorted."""
    by_kind: dict[str, list[str]] = {}
    for kind, name in children:
        if kind not in KINDS:
            raise ValueError(f"not a hospital child kind: {kind}")
        by_kind.setdefault(kind, []).append(name)
    return json.dumps({kind: sorted(names) for kind, names in sorted(by_kind.items())}, separators=(",", ":"))


def intended(annotations: Mapping[str, str] | None) -> list[Child] | None:
    """The children an unfinished onboarding asked for; None when no onboarding is unfinished.

    An annotation that cannot be read counts as asking for nothing known:
    it cannot be trusted to name children, and it must not block Ready forever.
    """
    text = (annotations or {}).get(ANNOTATION)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    return [
        (kind, str(name))
        for kind in KINDS
        for name in (data.get(kind) or [])
        if isinstance(data.get(kind), list) and isinstance(name, str)
    ]


def missing(wanted: Iterable[Child], existing: Iterable[Child]) -> list[Child]:
    """The wanted children that do not exist, in the order they were asked for."""
    present = set(existing)
    return [child for child in wanted if child not in present]


def describe(children: Iterable[Child]) -> str:
    """``RecordStore emr, AppInstance referrals``."""
    return ", ".join(f"{kind} {name}" for kind, name in children)
