"""Orders, referrals and consultations: a FHIR ``ServiceRequest`` and the ``Task`` that tracks it.

The Task's status moves requested -> received -> accepted | rejected -> in-progress -> completed, and
every step belongs to one party: the receiver (the Task's owner, the ServiceRequest's performer) receives,
accepts, rejects, starts and completes; the sender (the requester) may cancel until the receiver accepts.
Each version of the Task is an encrypted record in the store of the party that wrote it; the index keeps
the parties, the status and who wrote the current version. The transition table is data, and pure.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task

from medcloud.models.consortium import ANY_MEMBER, ConsortiumSpec, SharingCategory
from medcloud_exchange import index
from medcloud_exchange.app import FhirBody, FhirResponse, IfMatch, Reader, ResourceId, Writer
from medcloud_exchange.audit import Interaction
from medcloud_exchange.outcomes import conflict, forbidden, invalid, not_found, unprocessable
from medcloud_exchange.resources import ORGANIZATION, PATIENT
from medcloud_exchange.service import Context
from medcloud_exchange.workflows.common import (
    FHIR_ERRORS,
    Stepped,
    Subject,
    Workflows,
    bundle,
    dump,
    if_match_version,
    organization_of,
    path_id,
    reference_id,
    services,
    steps_of,
    subject_of,
    take_step,
    transition_problem,
    validated,
)

SNOMED = "http://snomed.info/sct"


class Kind(StrEnum):
    ORDER = "order"
    REFERRAL = "referral"
    CONSULTATION = "consultation"


# ServiceRequest.category (SNOMED CT) -> what the request is.
KINDS: dict[str, Kind] = {
    "108252007": Kind.ORDER,  # Laboratory procedure
    "363679005": Kind.ORDER,  # Imaging
    "3457005": Kind.REFERRAL,  # Patient referral
    "11429006": Kind.CONSULTATION,  # Consultation
}
# The sharing category under which the receiver reads the request (and the consortium's rules for it).
SHARED_AS: dict[Kind, str] = {
    Kind.ORDER: SharingCategory.EXAM_RESULTS.value,
    Kind.REFERRAL: SharingCategory.REFERRALS.value,
    Kind.CONSULTATION: SharingCategory.EMR.value,
}
SUPPORTING_KINDS = ("DocumentReference", "DiagnosticReport")


class TaskStatus(StrEnum):
    REQUESTED = "requested"
    RECEIVED = "received"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    FAILED = "failed"


class Party(StrEnum):
    SENDER = "sender"
    RECEIVER = "receiver"


S = TaskStatus
STEPS: dict[tuple[TaskStatus, TaskStatus], Party] = {
    **steps_of(Party.RECEIVER, (S.REQUESTED, S.RECEIVED), (S.REQUESTED, S.ACCEPTED), (S.REQUESTED, S.REJECTED)),
    **steps_of(Party.RECEIVER, (S.RECEIVED, S.ACCEPTED), (S.RECEIVED, S.REJECTED)),
    **steps_of(Party.RECEIVER, (S.ACCEPTED, S.IN_PROGRESS), (S.ACCEPTED, S.COMPLETED)),
    **steps_of(Party.RECEIVER, (S.IN_PROGRESS, S.COMPLETED), (S.IN_PROGRESS, S.FAILED)),
    # The sender may withdraw until the receiver accepts.
    **steps_of(Party.SENDER, (S.REQUESTED, S.CANCELLED), (S.RECEIVED, S.CANCELLED)),
}


def step_problem(current: TaskStatus, target: TaskStatus, party: Party | None) -> tuple[int, str] | None:
    """Why ``party`` may not move a Task from ``current`` to ``target`` (status code, diagnostic); None: it may."""
    return transition_problem(STEPS, current, target, {party} if party else set(), None, "Task")


def flow_allowed(spec: ConsortiumSpec, sender: str, receiver: str) -> bool:
    """Whether the Consortium's ``spec.sharing`` lets ``sender`` refer patients to ``receiver``."""
    return any(
        rule.category is SharingCategory.REFERRALS
        and (ANY_MEMBER in rule.from_ or sender in rule.from_)
        and (ANY_MEMBER in rule.to or receiver in rule.to)
        for rule in spec.sharing
    )


@dataclass(frozen=True)
class RequestInput:
    kind: Kind
    performer: str
    subject: Subject
    code_system: str | None
    code: str | None
    supporting: tuple[str, ...]
    resource: dict[str, Any]


def _requester(request: Any, caller: str, members: list[str]) -> None:
    reference = request.requester.reference if request.requester else None
    if reference and reference.startswith("#"):
        role = next(
            (
                c
                for c in request.contained or []
                if c.get_resource_type() == "PractitionerRole" and c.id == reference[1:]
            ),
            None,
        )
        if role is None or role.practitioner is None or role.organization is None:
            raise unprocessable("a contained requester PractitionerRole names its practitioner and organization")
        reference = role.organization.reference
    if organization_of(reference, members, "ServiceRequest.requester") != caller:
        raise forbidden(f"{caller} may only send requests as itself (requester Organization/{caller})")


def parse_request(body: dict[str, Any], spec: ConsortiumSpec, caller: str) -> RequestInput:
    request = validated(ServiceRequest, body, "ServiceRequest")
    if request.intent != "order" or request.status != "active":
        raise unprocessable("a ServiceRequest sent through the exchange is intent order, status active")
    kinds = {
        KINDS[c.code]
        for concept in request.category or []
        for c in concept.coding or []
        if c.system == SNOMED and c.code in KINDS
    }
    if len(kinds) != 1:
        raise unprocessable(
            f"ServiceRequest.category needs one SNOMED CT code of {', '.join(sorted(KINDS))} "
            "(laboratory, imaging, referral, consultation)"
        )
    (kind,) = kinds
    _requester(request, caller, spec.members)
    performers = [
        organization_of(p.reference, spec.members, "ServiceRequest.performer") for p in request.performer or []
    ]
    if len(performers) > 1:
        raise unprocessable("a ServiceRequest names one performing institution")
    performer = performers[0] if performers else caller
    if kind is not Kind.ORDER and performer == caller:
        raise unprocessable(f"a {kind.value} goes to another member (ServiceRequest.performer)")
    codings = [c for c in (request.code.coding or [] if request.code else []) if c.system and c.code]
    supporting = tuple(str(s.reference) for s in request.supportingInfo or [] if s.reference)
    if any(ref.split("/")[0] not in SUPPORTING_KINDS for ref in supporting):
        raise unprocessable(f"supportingInfo may reference {' or '.join(SUPPORTING_KINDS)} of the exchange")
    return RequestInput(
        kind=kind,
        performer=performer,
        subject=subject_of(request.subject, "ServiceRequest.subject"),
        code_system=str(codings[0].system) if codings else None,
        code=str(codings[0].code) if codings else None,
        supporting=supporting,
        resource=dump(request),
    )


@dataclass(frozen=True)
class RequestRow:
    id: uuid.UUID
    patient_id: uuid.UUID
    kind: Kind
    requester: str
    performer: str
    code_system: str | None
    code: str | None
    status: str


@dataclass(frozen=True)
class TaskRow:
    id: uuid.UUID
    service_request_id: uuid.UUID
    requester: str
    owner: str
    status: TaskStatus
    written_by: str
    version: int

    def party(self, hospital: str) -> Party | None:
        if hospital == self.owner:
            return Party.RECEIVER
        if hospital == self.requester:
            return Party.SENDER
        return None


_REQUEST = "id, patient_id, kind, requester, performer, code_system, code, status"
_TASK = "id, service_request_id, requester, owner, status, written_by, version"


def request_row(conn: index.Conn, request_id: uuid.UUID, *, lock: bool = False) -> RequestRow | None:
    sql = f"SELECT {_REQUEST} FROM service_request WHERE id = %s" + (" FOR UPDATE" if lock else "")  # noqa: S608
    found = conn.execute(sql, (request_id,)).fetchone()
    if found is None:
        return None
    return RequestRow(found[0], found[1], Kind(found[2]), found[3], found[4], found[5], found[6], found[7])


def _task_row(found: Any) -> TaskRow:
    return TaskRow(found[0], found[1], found[2], found[3], TaskStatus(found[4]), found[5], found[6])


def task_row(conn: index.Conn, task_id: uuid.UUID, *, lock: bool = False) -> TaskRow | None:
    sql = f"SELECT {_TASK} FROM task WHERE id = %s" + (" FOR UPDATE" if lock else "")  # noqa: S608
    found = conn.execute(sql, (task_id,)).fetchone()
    return _task_row(found) if found else None


def task_resource(
    row: TaskRow, patient: uuid.UUID, *, reason: str | None = None, outputs: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The Task as FHIR R4: parties as Organizations, focus the ServiceRequest, outputs by reference."""
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": str(row.id),
        "meta": {"versionId": str(row.version)},
        "status": row.status.value,
        "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": f"ServiceRequest/{row.service_request_id}"},
        "basedOn": [{"reference": f"ServiceRequest/{row.service_request_id}"}],
        "for": {"reference": f"{PATIENT}{patient}"},
        "requester": {"reference": f"{ORGANIZATION}{row.requester}"},
        "owner": {"reference": f"{ORGANIZATION}{row.owner}"},
    }
    if reason:
        task["statusReason"] = {"text": reason}
    if outputs:
        task["output"] = [
            {"type": {"text": ref.split("/")[0]}, "valueReference": {"reference": ref}} for ref in outputs
        ]
    validated(Task, task, "Task")
    return task


class Requests:
    """ServiceRequests and their Tasks, for every kind; referrals and consultations add their own rules."""

    def __init__(self, workflows: Workflows) -> None:
        self.wf = workflows

    def create(self, ctx: Context, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        parsed = parse_request(body, ctx.spec, ctx.hospital)
        if parsed.kind is Kind.REFERRAL and not flow_allowed(ctx.spec, ctx.hospital, parsed.performer):
            raise forbidden(
                f"the Consortium's spec.sharing does not allow referrals from {ctx.hospital} to {parsed.performer}"
            )
        request_id, task_id = uuid.uuid4(), uuid.uuid4()
        with self.wf.db.transaction() as conn:
            patient = self.wf.patient_of_subject(conn, parsed.subject, "ServiceRequest.subject", create=False)
            conn.execute(
                f"INSERT INTO service_request ({_REQUEST}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",  # noqa: S608
                (
                    request_id,
                    patient,
                    parsed.kind.value,
                    ctx.hospital,
                    parsed.performer,
                    parsed.code_system,
                    parsed.code,
                    "active",
                ),
            )
            resource = {**parsed.resource, "id": str(request_id), "subject": {"reference": f"{PATIENT}{patient}"}}
            resource["meta"] = {"versionId": "1"}
            self.wf.save(ctx, resource)
            task = None
            objects = [f"ServiceRequest/{request_id}"]
            if parsed.kind is not Kind.ORDER:
                row = TaskRow(task_id, request_id, ctx.hospital, parsed.performer, S.REQUESTED, ctx.hospital, 1)
                conn.execute(
                    f"INSERT INTO task ({_TASK}) VALUES (%s, %s, %s, %s, %s, %s, %s)",  # noqa: S608
                    (task_id, request_id, ctx.hospital, parsed.performer, S.REQUESTED.value, ctx.hospital, 1),
                )
                task = task_resource(row, patient)
                self.wf.save(ctx, task, 1)
                objects.append(f"Task/{task_id}")
            self.wf.audit(
                ctx,
                Interaction.CREATE,
                ok=True,
                description=f"{parsed.kind.value} to {parsed.performer}",
                patient=patient,
                objects=objects,
            )
        return resource, task

    def read(self, ctx: Context, request_id: uuid.UUID) -> dict[str, Any]:
        """A ServiceRequest, for its two parties only; the receiver reads it under the patient's consent."""
        with self.wf.db.connection() as conn:
            row = request_row(conn, request_id)
        if row is None or ctx.hospital not in (row.requester, row.performer):
            raise not_found(f"ServiceRequest/{request_id} is not known")
        objects = [f"ServiceRequest/{request_id}"]
        if ctx.hospital != row.requester:
            self.wf.authorise(ctx, row.patient_id, row.requester, SHARED_AS[row.kind], objects, "ServiceRequest")
        resource = self.wf.load(row.requester, "ServiceRequest", row.id)
        resource["status"] = row.status
        self.wf.audit(
            ctx, Interaction.READ, ok=True, description=f"{row.kind.value}", patient=row.patient_id, objects=objects
        )
        return resource

    # ------------------------------------------------------------------ tasks

    def _task(self, row: TaskRow) -> dict[str, Any]:
        return self.wf.load(row.written_by, "Task", row.id, row.version)

    def read_task(self, ctx: Context, task_id: uuid.UUID) -> dict[str, Any]:
        with self.wf.db.connection() as conn:
            row = task_row(conn, task_id)
            request = request_row(conn, row.service_request_id) if row else None
        if row is None or request is None or row.party(ctx.hospital) is None:
            raise not_found(f"Task/{task_id} is not known")
        task = self._task(row)
        self.wf.audit(
            ctx, Interaction.READ, ok=True, description="task", patient=request.patient_id, objects=[f"Task/{task_id}"]
        )
        return task

    def box(self, ctx: Context, *, inbox: bool, status: str | None, focus: uuid.UUID | None) -> list[dict[str, Any]]:
        """The member's inbox (Tasks it owns) or outbox (Tasks it requested), newest first."""
        where = ["t.owner = %s" if inbox else "t.requester = %s"]
        params: list[Any] = [ctx.hospital]
        if status:
            where.append("t.status = %s")
            params.append(status)
        if focus:
            where.append("t.service_request_id = %s")
            params.append(focus)
        with self.wf.db.connection() as conn:
            rows = conn.execute(
                f"SELECT {', '.join('t.' + c.strip() for c in _TASK.split(','))}, r.patient_id FROM task t "  # noqa: S608
                f"JOIN service_request r ON r.id = t.service_request_id WHERE {' AND '.join(where)} "
                "ORDER BY t.updated_at DESC LIMIT 100",
                params,
            ).fetchall()
        tasks = []
        for found in rows:
            row = _task_row(found)
            tasks.append(self._task(row))
            self.wf.audit(
                ctx,
                Interaction.SEARCH,
                ok=True,
                description="inbox" if inbox else "outbox",
                patient=found[7],
                objects=[f"Task/{row.id}"],
            )
        return tasks

    def step(
        self,
        ctx: Context,
        task_id: uuid.UUID,
        target: TaskStatus,
        *,
        reason: str | None = None,
        outputs: tuple[str, ...] = (),
        expected_version: int | None = None,
    ) -> dict[str, Any]:
        """Move a Task one step, by the party the step belongs to; the ServiceRequest follows when it ends."""
        with self.wf.db.transaction() as conn:
            row = task_row(conn, task_id, lock=True)
            request = request_row(conn, row.service_request_id, lock=True) if row else None
            if row is None or request is None:
                raise not_found(f"Task/{task_id} is not known")

            def audit_refusal(problem: tuple[int, str], patient: uuid.UUID = request.patient_id) -> None:
                objects = [f"Task/{task_id}"]
                at = patient if problem[0] != 404 else None
                self.wf.audit(ctx, Interaction.UPDATE, ok=False, description=problem[1], patient=at, objects=objects)

            version = take_step(
                conn,
                Stepped("task", "Task", task_id, row.version),
                target,
                ctx.hospital,
                problem=step_problem(row.status, target, row.party(ctx.hospital)),
                expected_version=expected_version,
                on_refused=audit_refusal,
            )
            if target in (S.COMPLETED, S.REJECTED, S.CANCELLED, S.FAILED):
                closed = {S.COMPLETED: "completed", S.FAILED: "revoked"}.get(target, "revoked")
                conn.execute("UPDATE service_request SET status = %s WHERE id = %s", (closed, request.id))
            moved = TaskRow(row.id, row.service_request_id, row.requester, row.owner, target, ctx.hospital, version)
            kept_outputs = tuple(o["valueReference"]["reference"] for o in self._task(row).get("output", []))
            task = task_resource(moved, request.patient_id, reason=reason, outputs=kept_outputs + outputs)
            self.wf.save(ctx, task, version)
            self.wf.audit(
                ctx,
                Interaction.UPDATE,
                ok=True,
                description=f"{request.kind.value} task {row.status.value} -> {target.value}",
                patient=request.patient_id,
                objects=[f"Task/{task_id}", *outputs],
            )
        return task

    def close_order(self, ctx: Context, request_id: uuid.UUID, output: str) -> tuple[dict[str, Any], RequestRow]:
        """Close the caller's own active order with a Task whose output is ``output`` (e.g. a recognised report)."""
        task_id = uuid.uuid4()
        with self.wf.db.transaction() as conn:
            request = request_row(conn, request_id, lock=True)
            if request is None or request.requester != ctx.hospital or request.kind is not Kind.ORDER:
                raise not_found(f"ServiceRequest/{request_id} is not an order of {ctx.hospital}")
            if request.status != "active":
                raise conflict(f"ServiceRequest/{request_id} is {request.status}, not active")
            row = TaskRow(task_id, request_id, ctx.hospital, ctx.hospital, S.COMPLETED, ctx.hospital, 1)
            conn.execute(
                f"INSERT INTO task ({_TASK}) VALUES (%s, %s, %s, %s, %s, %s, %s)",  # noqa: S608
                (task_id, request_id, ctx.hospital, ctx.hospital, S.COMPLETED.value, ctx.hospital, 1),
            )
            conn.execute("UPDATE service_request SET status = 'completed' WHERE id = %s", (request_id,))
            task = task_resource(row, request.patient_id, reason="a recognised result is used", outputs=(output,))
            self.wf.save(ctx, task, 1)
            self.wf.audit(
                ctx,
                Interaction.CREATE,
                ok=True,
                description="order closed by a recognised result",
                patient=request.patient_id,
                objects=[f"Task/{task_id}", f"ServiceRequest/{request_id}", output],
            )
        return task, request


router = APIRouter(tags=["referrals", "remote-consultation"])
OrganizationParam = Annotated[str | None, Query(max_length=80, description="Organization/<this member>")]


@router.post("/fhir/ServiceRequest", status_code=201, response_class=FhirResponse, responses=FHIR_ERRORS)
def send_request(request: Request, ctx: Writer, body: FhirBody) -> FhirResponse:
    """An order, a referral or a consultation request (by category); referrals and consultations get a Task."""
    resource, task = services(request).requests.create(ctx, body)
    headers = {"Location": f"/fhir/ServiceRequest/{resource['id']}"}
    if task is not None:
        headers["Content-Location"] = f"/fhir/Task/{task['id']}"
    return FhirResponse(resource, status_code=201, headers=headers)


@router.get("/fhir/ServiceRequest/{id}", response_class=FhirResponse, responses=FHIR_ERRORS)
def read_request(request: Request, ctx: Reader, id: ResourceId) -> FhirResponse:
    return FhirResponse(services(request).requests.read(ctx, path_id(id, "ServiceRequest")))


@router.get("/fhir/Task", response_class=FhirResponse, responses=FHIR_ERRORS)
def task_box(
    request: Request,
    ctx: Reader,
    owner: OrganizationParam = None,
    requester: OrganizationParam = None,
    status: Annotated[TaskStatus | None, Query()] = None,
    focus: Annotated[str | None, Query(max_length=80, description="ServiceRequest/<id>")] = None,
) -> FhirResponse:
    """The inbox (``owner=Organization/<me>``) or the outbox (``requester=Organization/<me>``) of a member."""
    if (owner is None) == (requester is None):
        raise invalid("give exactly one of owner (inbox) and requester (outbox), Organization/<this member>")
    named = (owner or requester or "").removeprefix(ORGANIZATION)
    if named != ctx.hospital:
        raise forbidden(f"{ctx.hospital} sees its own inbox and outbox only")
    focus_id = reference_id(focus, "ServiceRequest", "focus") if focus else None
    tasks = services(request).requests.box(
        ctx, inbox=owner is not None, status=status.value if status else None, focus=focus_id
    )
    return FhirResponse(bundle(tasks, [], "Task"))


@router.get("/fhir/Task/{id}", response_class=FhirResponse, responses=FHIR_ERRORS)
def read_task(request: Request, ctx: Reader, id: ResourceId) -> FhirResponse:
    return FhirResponse(services(request).requests.read_task(ctx, path_id(id, "Task")))


@router.put("/fhir/Task/{id}", response_class=FhirResponse, responses=FHIR_ERRORS)
def step_task(request: Request, ctx: Writer, id: ResourceId, body: FhirBody, if_match: IfMatch = None) -> FhirResponse:
    """One step of the Task: its new status (and statusReason, output); only the party the step belongs to."""
    task = validated(Task, body, "Task")
    if task.id not in (None, id):
        raise invalid(f"the body's id {task.id!r} is not Task/{id}")
    try:
        target = TaskStatus(task.status)
    except ValueError:
        raise unprocessable(
            f"Task.status {task.status!r} is not one of {', '.join(s.value for s in TaskStatus)}"
        ) from None
    outputs = tuple(
        str(o.valueReference.reference) for o in task.output or [] if o.valueReference and o.valueReference.reference
    )
    version = if_match_version(if_match)
    reason = task.statusReason.text if task.statusReason else None
    moved = services(request).requests.step(
        ctx, path_id(id, "Task"), target, reason=reason, outputs=outputs, expected_version=version
    )
    return FhirResponse(moved, headers={"ETag": f'W/"{moved["meta"]["versionId"]}"'})
