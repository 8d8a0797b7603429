"""The Task state machine, the referral flows the Consortium allows, and what a ServiceRequest must carry."""

from __future__ import annotations

import itertools
import uuid

import pytest

from medcloud.models.consortium import ConsortiumSpec
from medcloud_exchange.outcomes import FhirError
from medcloud_exchange.workflows.requests import (
    STEPS,
    Kind,
    Party,
    TaskRow,
    TaskStatus,
    flow_allowed,
    parse_request,
    step_problem,
    task_resource,
)
from tests.workflows_requests import service_request

S = TaskStatus
SPEC = ConsortiumSpec.model_validate(
    {
        "displayName": "Riverton",
        "leadHospital": "city",
        "members": ["city", "county", "township", "community"],
        "sharing": [
            {"category": "referrals", "from": ["township", "community"], "to": ["city", "county"]},
            {"category": "referrals", "from": ["city", "county"], "to": ["*"]},
        ],
    }
)
PATIENT = f"Patient/{uuid.uuid4()}"


def test_the_happy_path_is_the_receivers_and_cancelling_the_senders() -> None:
    path = [S.REQUESTED, S.RECEIVED, S.ACCEPTED, S.IN_PROGRESS, S.COMPLETED]
    for current, target in itertools.pairwise(path):
        assert step_problem(current, target, Party.RECEIVER) is None
        assert step_problem(current, target, Party.SENDER) == (
            403,
            f"only the receiver may move a {current.value} Task to {target.value}",
        )
    assert step_problem(S.REQUESTED, S.CANCELLED, Party.SENDER) is None
    assert step_problem(S.RECEIVED, S.CANCELLED, Party.SENDER) is None
    assert step_problem(S.RECEIVED, S.REJECTED, Party.RECEIVER) is None


def test_no_cancelling_after_acceptance_no_going_back_and_strangers_see_nothing() -> None:
    late = step_problem(S.ACCEPTED, S.CANCELLED, Party.SENDER)
    assert late is not None
    assert late[0] == 409
    assert "next: completed, in-progress" in late[1]
    assert step_problem(S.COMPLETED, S.IN_PROGRESS, Party.RECEIVER) is not None
    assert step_problem(S.REJECTED, S.ACCEPTED, Party.RECEIVER) is not None
    assert step_problem(S.REQUESTED, S.RECEIVED, None) == (404, "the Task is not one of this member's")
    # Every step out of a final state is refused: the table has none.
    finals = {S.COMPLETED, S.REJECTED, S.CANCELLED, S.FAILED}
    assert not [pair for pair in STEPS if pair[0] in finals]


def test_referrals_go_up_down_and_across_only_as_spec_sharing_says() -> None:
    assert flow_allowed(SPEC, "township", "county")  # up
    assert flow_allowed(SPEC, "city", "community")  # down
    assert flow_allowed(SPEC, "county", "city")  # across
    assert not flow_allowed(SPEC, "township", "community")  # clinic to clinic
    assert not flow_allowed(SPEC.model_copy(update={"sharing": []}), "township", "county")


def test_a_referral_names_its_practitioner_and_institution_and_goes_to_another_member() -> None:
    body = service_request("referral", "township", "county", PATIENT, reason="suspected pneumonia")
    parsed = parse_request(body, SPEC, "township")
    assert parsed.kind is Kind.REFERRAL
    assert parsed.performer == "county"
    assert parsed.subject.reference == PATIENT

    with pytest.raises(FhirError, match="only send requests as itself") as raised:
        parse_request(body, SPEC, "community")
    assert raised.value.status == 403
    with pytest.raises(FhirError, match="goes to another member"):
        parse_request(service_request("referral", "township", "township", PATIENT), SPEC, "township")
    with pytest.raises(FhirError, match="Organization/<member hospital>"):
        parse_request(service_request("referral", "township", "elsewhere", PATIENT), SPEC, "township")
    with pytest.raises(FhirError, match="supportingInfo"):
        parse_request(
            service_request("referral", "township", "county", PATIENT, supporting=("Patient/x",)), SPEC, "township"
        )
    order = parse_request(service_request("laboratory", "township", None, PATIENT), SPEC, "township")
    assert order.kind is Kind.ORDER
    assert order.performer == "township"


def test_a_task_is_valid_fhir_and_keeps_its_parties() -> None:
    row = TaskRow(uuid.uuid4(), uuid.uuid4(), "township", "county", S.ACCEPTED, "county", 3)
    task = task_resource(row, uuid.uuid4(), reason="bed available", outputs=("Appointment/1",))
    assert task["owner"] == {"reference": "Organization/county"}
    assert task["requester"] == {"reference": "Organization/township"}
    assert task["meta"]["versionId"] == "3"
    assert task["statusReason"] == {"text": "bed available"}
    assert task["output"][0]["valueReference"] == {"reference": "Appointment/1"}


def test_a_member_no_rule_shares_from_is_told_why_its_records_are_not_kept() -> None:
    import base64
    import types

    from medcloud_exchange.audit import Requester
    from medcloud_exchange.decision import Purpose
    from medcloud_exchange.service import Context
    from medcloud_exchange.workflows.common import Workflows

    receiving_only = SPEC.model_copy(
        update={"sharing": [r for r in SPEC.sharing if "community" not in r.from_ and "*" not in r.from_]}
    )
    settings = types.SimpleNamespace(consortium="riverton", blind_key=lambda: base64.b64decode("A" * 43 + "="))
    # Nothing but the settings is reached: the refusal comes before any store or database.
    workflows = Workflows(types.SimpleNamespace(settings=settings, db=None))
    ctx = Context(
        Requester("system:serviceaccount:hospital-community:apps", "community", "P/1", "TREAT"),
        receiving_only,
        Purpose.TREAT,
    )
    with pytest.raises(FhirError, match=r"list it in a spec\.sharing rule's from") as raised:
        workflows.save(ctx, {"resourceType": "Task", "id": str(uuid.uuid4())})
    assert raised.value.status == 403
