"""Consortia: the city's medical alliances, their members, and what the members share with whom."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from medcloud.kube.client import Manifest
from medcloud.models import Consortium, Hospital
from medcloud.models.common import DNS1123_SUBDOMAIN_PATTERN
from medcloud_api import problems
from medcloud_api.deps import Authorizer, Authz, KubeDep, current_user
from medcloud_api.kube import Kube
from medcloud_api.problems import not_found
from medcloud_api.readiness import judge
from medcloud_api.schemas import (
    ConsortiumList,
    ConsortiumSummary,
    ConsortiumView,
    MemberList,
    MemberView,
    SharingRuleView,
)
from medcloud_api.sharing import member_flows

router = APIRouter(prefix="/v1/consortia", tags=["consortia"], dependencies=[Depends(current_user)])

ConsortiumNameParam = Annotated[
    str,
    Path(
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        description="Name of the Consortium.",
        examples=["riverton-medical-alliance"],
    ),
]


def _summary(consortium: Mapping[str, Any]) -> ConsortiumSummary:
    spec = consortium.get("spec") or {}
    state, ready, _ = judge(consortium)
    return ConsortiumSummary(
        name=str(consortium["metadata"]["name"]),
        display_name=spec.get("displayName"),
        lead_hospital=spec.get("leadHospital"),
        members=len(spec.get("members") or []),
        consent_required=bool(spec.get("consentRequired", True)),
        state=state,
        ready=ready,
    )


def _visible_hospitals(kube: Kube, authz: Authorizer, names: list[str]) -> dict[str, Manifest | None]:
    """name -> Hospital (None: it does not exist) for the members the caller may read."""
    if authz.allowed("list", "hospitals"):
        every = {str(h["metadata"]["name"]): h for h in kube.list_all(Hospital)}
        return {n: every.get(n) for n in names}
    return {n: kube.get(Hospital, n) for n in names if authz.allowed("get", "hospitals", name=n)}


def _members(kube: Kube, authz: Authorizer, consortium: Mapping[str, Any]) -> list[MemberView]:
    spec = consortium.get("spec") or {}
    names = [str(m) for m in spec.get("members") or []]
    flows = member_flows(spec)
    hospitals = _visible_hospitals(kube, authz, names)
    out = []
    for name in names:
        shares, receives = flows[name]
        view = MemberView(
            name=name,
            lead=name == spec.get("leadHospital"),
            visible=name in hospitals,
            shares=shares,
            receives=receives,
        )
        if name in hospitals:
            hospital = hospitals[name]
            view.exists = hospital is not None
            if hospital is not None:
                state, ready, _ = judge(hospital)
                hospital_spec = hospital.get("spec") or {}
                view.display_name = hospital_spec.get("displayName")
                view.tier = hospital_spec.get("tier")
                view.state, view.ready = state, ready
        out.append(view)
    return out


def _read(kube: Kube, authz: Authorizer, name: str) -> Manifest:
    authz.authorize("get", "consortia", name=name)
    consortium = kube.get(Consortium, name)
    if consortium is None:
        raise not_found(f"consortium {name}")
    return consortium


@router.get("", response_model=ConsortiumList, summary="List consortia", responses=problems.responses(401))
def list_consortia(kube: KubeDep, authz: Authz) -> ConsortiumList:
    """The consortia the caller may see (a city has a handful, so there are no pages)."""
    may_list = authz.allowed("list", "consortia")
    items = [
        _summary(c)
        for c in kube.list_all(Consortium)
        if may_list or authz.allowed("get", "consortia", name=str(c["metadata"]["name"]))
    ]
    return ConsortiumList(items=items)


@router.get(
    "/{name}",
    response_model=ConsortiumView,
    summary="A consortium, its members and what they share",
    responses=problems.responses(401, 403, 404, 422),
)
def get_consortium(name: ConsortiumNameParam, kube: KubeDep, authz: Authz) -> ConsortiumView:
    """The sharing rules as written, and each member with the flows they allow (`*` expanded).

    Member hospitals the caller may not read show their name and flows only.
    """
    consortium = _read(kube, authz, name)
    spec = consortium.get("spec") or {}
    return ConsortiumView(
        **_summary(consortium).model_dump(),
        sharing=[
            SharingRuleView(
                category=str(rule.get("category")),
                from_=list(rule.get("from") or []),
                to=list(rule.get("to") or []),
                require_consent=bool(rule.get("requireConsent", True)),
            )
            for rule in spec.get("sharing") or []
        ],
        member_details=_members(kube, authz, consortium),
    )


@router.get(
    "/{name}/members",
    response_model=MemberList,
    summary="Members of a consortium",
    responses=problems.responses(401, 403, 404, 422),
)
def list_members(name: ConsortiumNameParam, kube: KubeDep, authz: Authz) -> MemberList:
    """Each member: tier and readiness (when the caller may read it), and what it shares and receives."""
    return MemberList(items=_members(kube, authz, _read(kube, authz, name)))
