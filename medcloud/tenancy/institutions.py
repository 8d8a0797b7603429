"""Who holds an institution code: one Hospital per code, the oldest keeps it.

The code is the institution's identity in every audit trail, so two
Hospitals must never share one. The control API refuses a duplicate (409);
a duplicate applied with kubectl is flagged by the operator. Both decide with
this one rule, so they never disagree: the Hospital created first keeps the
code (ties, possible at one-second timestamp resolution, go to the name that
sorts first).
"""

from __future__ import annotations

from collections.abc import Iterable

from medcloud.kube.client import Manifest


def _age_key(hospital: Manifest) -> tuple[str, str]:
    meta = hospital.get("metadata") or {}
    # RFC 3339 UTC timestamps of one format sort as their times do.
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def code_holder(hospitals: Iterable[Manifest], code: str) -> str | None:
    """The name of the Hospital that keeps ``code``, or None when no Hospital has it."""
    claimants = [h for h in hospitals if (h.get("spec") or {}).get("institutionCode") == code]
    if not claimants:
        return None
    return str(min(claimants, key=_age_key)["metadata"]["name"])
