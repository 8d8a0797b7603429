"""Remote consultation (catalog app ``remote-consultation``).

A requesting doctor asks a specialist member for a consultation on a case (a ``ServiceRequest`` of category
consultation, with a Task, as in ``requests``), shares the case documents (``supportingInfo``, read under the
patient's consent), and the two talk in a thread of ``Communication``s. The consultant may book a session
(an ``Appointment`` with a virtual ``Location``, see ``appointments``) and closes the consultation with a
consult report, a ``DocumentReference`` published into the **requester's** record: the exchange writes it
into the requester's RecordStore (the requester is its custodian, the consultant its author) and completes
the Task with the report as its output.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.documentreference import DocumentReference

from medcloud_exchange.app import FhirBody, FhirResponse, Reader, ResourceId, Writer
from medcloud_exchange.audit import Interaction
from medcloud_exchange.outcomes import conflict, forbidden, not_found, unprocessable
from medcloud_exchange.resources import ORGANIZATION, PATIENT
from medcloud_exchange.service import Context
from medcloud_exchange.workflows.common import (
    FHIR_ERRORS,
    Workflows,
    bundle,
    dump,
    path_id,
    reference_id,
    services,
    validated,
)
from medcloud_exchange.workflows.requests import SHARED_AS, Kind, Requests, TaskStatus, request_row

CONSULT_NOTE = ("http://loinc.org", "11488-4")


class Consultations:
    def __init__(self, workflows: Workflows, requests: Requests) -> None:
        self.wf = workflows
        self.requests = requests

    def say(self, ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
        """One message of the thread, from one party of the consultation (or referral) to the other."""
        message = validated(Communication, body, "Communication")
        if not message.basedOn or len(message.basedOn) != 1:
            raise unprocessable("a Communication is basedOn its ServiceRequest/<id>")
        request_id = reference_id(message.basedOn[0].reference, "ServiceRequest", "Communication.basedOn")
        if not message.payload or not any(p.contentString for p in message.payload):
            raise unprocessable("a Communication carries its message as payload.contentString")
        communication_id = uuid.uuid4()
        with self.wf.db.transaction() as conn:
            request = request_row(conn, request_id)
            if (
                request is None
                or request.kind is Kind.ORDER
                or ctx.hospital not in (request.requester, request.performer)
            ):
                raise not_found(f"ServiceRequest/{request_id} is not a consultation or referral of {ctx.hospital}")
            other = request.performer if ctx.hospital == request.requester else request.requester
            sent = datetime.now(UTC)
            conn.execute(
                "INSERT INTO communication (id, service_request_id, sender, sent) VALUES (%s, %s, %s, %s)",
                (communication_id, request_id, ctx.hospital, sent),
            )
            resource = {
                **dump(message),
                "id": str(communication_id),
                "status": "completed",
                "subject": {"reference": f"{PATIENT}{request.patient_id}"},
                "sender": {"reference": f"{ORGANIZATION}{ctx.hospital}"},
                "recipient": [{"reference": f"{ORGANIZATION}{other}"}],
                "sent": sent.isoformat(),
            }
            self.wf.save(ctx, resource)
            self.wf.audit(
                ctx,
                Interaction.CREATE,
                ok=True,
                description=f"message to {other}",
                patient=request.patient_id,
                objects=[f"Communication/{communication_id}", f"ServiceRequest/{request_id}"],
            )
        return resource

    def thread(self, ctx: Context, request_id: uuid.UUID) -> list[dict[str, Any]]:
        """The thread, oldest first; the other party's messages read under the patient's consent."""
        with self.wf.db.connection() as conn:
            request = request_row(conn, request_id)
            if request is None or ctx.hospital not in (request.requester, request.performer):
                raise not_found(f"ServiceRequest/{request_id} is not known")
            rows = conn.execute(
                "SELECT id, sender FROM communication WHERE service_request_id = %s ORDER BY sent, id", (request_id,)
            ).fetchall()
        objects = [f"Communication/{r[0]}" for r in rows]
        for sender in {r[1] for r in rows} - {ctx.hospital}:
            self.wf.authorise(ctx, request.patient_id, sender, SHARED_AS[request.kind], objects, "Communication")
        messages = [self.wf.load(sender, "Communication", message_id) for message_id, sender in rows]
        self.wf.audit(
            ctx,
            Interaction.SEARCH,
            ok=True,
            description="consultation thread",
            patient=request.patient_id,
            objects=objects,
        )
        return messages

    def report(
        self, ctx: Context, request_id: uuid.UUID, body: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The consultant's report: published into the requester's record; the consultation's Task completed."""
        with self.wf.db.connection() as conn:
            request = request_row(conn, request_id)
            task = conn.execute("SELECT id, status FROM task WHERE service_request_id = %s", (request_id,)).fetchone()
        if (
            request is None
            or request.kind is not Kind.CONSULTATION
            or ctx.hospital not in (request.requester, request.performer)
        ):
            raise not_found(f"ServiceRequest/{request_id} is not a consultation of {ctx.hospital}")
        if ctx.hospital != request.performer:
            raise forbidden("only the consultant reports on a consultation")
        if task is None or TaskStatus(task[1]) not in (TaskStatus.ACCEPTED, TaskStatus.IN_PROGRESS):
            raise conflict("the consultation is reported on once accepted, and only once")
        note = dump(validated(DocumentReference, body, "DocumentReference"))
        if (note.get("subject") or {}).get("reference") != f"{PATIENT}{request.patient_id}":
            raise unprocessable(
                f"the consult report's subject is the consultation's patient, {PATIENT}{request.patient_id}"
            )
        context = dict(note.get("context") or {})
        context["related"] = [*context.get("related", []), {"reference": f"ServiceRequest/{request_id}"}]
        authored = {**note, "author": [{"reference": f"{ORGANIZATION}{ctx.hospital}"}], "context": context}
        document = self.wf.exchange.publish(ctx, authored, custodian=request.requester)
        completed = self.requests.step(
            ctx,
            task[0],
            TaskStatus.COMPLETED,
            reason="consult report sent",
            outputs=(f"DocumentReference/{document['id']}",),
        )
        return document, completed


router = APIRouter(tags=["remote-consultation"])


@router.post("/fhir/Communication", status_code=201, response_class=FhirResponse, responses=FHIR_ERRORS)
def say(request: Request, ctx: Writer, body: FhirBody) -> FhirResponse:
    """A message in the thread of a consultation or referral (basedOn ServiceRequest/<id>)."""
    return FhirResponse(services(request).consultations.say(ctx, body), status_code=201)


@router.get("/fhir/Communication", response_class=FhirResponse, responses=FHIR_ERRORS)
def thread(
    request: Request,
    ctx: Reader,
    based_on: Annotated[str, Query(alias="based-on", max_length=80, description="ServiceRequest/<id>")],
) -> FhirResponse:
    request_id = reference_id(based_on, "ServiceRequest", "based-on")
    return FhirResponse(bundle(services(request).consultations.thread(ctx, request_id), [], "Communication"))


@router.post(
    "/fhir/ServiceRequest/{id}/$consult-report", status_code=201, response_class=FhirResponse, responses=FHIR_ERRORS
)
def consult_report(request: Request, ctx: Writer, id: ResourceId, body: FhirBody) -> FhirResponse:
    """Close a consultation with its report (a DocumentReference, published into the requester's record)."""
    document, task = services(request).consultations.report(ctx, path_id(id, "ServiceRequest"), body)
    return FhirResponse(bundle([document], [task], "DocumentReference"), status_code=201)
