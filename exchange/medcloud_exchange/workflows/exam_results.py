"""Exam-result mutual recognition (catalog app ``exam-mutual-recognition``).

A member publishes a final, LOINC-coded ``DiagnosticReport`` whose performer is itself, with its
``Observation``s contained and valued in UCUM. Before ordering a test, another member asks for a
recognised result of this patient and test (``$recognised``): the Consortium's rule (producer tier,
accreditation, validity window) decides, under the patient's consent. Using one records a ``Task`` that
closes the new order by reference to the report, and counts a test not repeated.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.task import Task
from prometheus_client import Counter

from medcloud.models.consortium import SharingCategory
from medcloud_exchange import index
from medcloud_exchange.app import (
    FhirBody,
    FhirResponse,
    PatientIdentifierParam,
    PatientParam,
    Reader,
    ResourceId,
    Writer,
)
from medcloud_exchange.audit import Interaction
from medcloud_exchange.outcomes import conflict, forbidden, invalid, not_found, unprocessable
from medcloud_exchange.resources import PATIENT, _aware
from medcloud_exchange.service import Context
from medcloud_exchange.workflows.common import (
    FHIR_ERRORS,
    Subject,
    Workflows,
    bundle,
    dump,
    organization_of,
    path_id,
    reference_id,
    services,
    subject_of,
    validated,
)
from medcloud_exchange.workflows.recognition import Candidate, Producer, longest_window, not_recognised, recognised
from medcloud_exchange.workflows.requests import Requests

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
CATEGORY = SharingCategory.EXAM_RESULTS.value

TESTS_NOT_REPEATED = Counter(
    "medcloud_exchange_tests_not_repeated_total",
    "Orders closed by a recognised result of another member instead of repeating the test, by LOINC code.",
    ["test", "producer"],
)


@dataclass(frozen=True)
class ReportInput:
    subject: Subject
    test_code: str
    categories: tuple[str, ...]
    issued: datetime
    resource: dict[str, Any]


def _loinc(concept: Any, what: str) -> str:
    codes = [c.code for c in (concept.coding or [] if concept else []) if c.system == LOINC and c.code]
    if not codes:
        raise unprocessable(f"{what} needs a LOINC ({LOINC}) coding")
    return str(codes[0])


def parse_report(body: dict[str, Any], caller: str, members: list[str]) -> ReportInput:
    """A final, LOINC-coded report performed by the caller, its contained Observations final and in UCUM."""
    report = validated(DiagnosticReport, body, "DiagnosticReport")
    if report.status != "final":
        raise unprocessable("only a final DiagnosticReport is published for recognition")
    test_code = _loinc(report.code, "DiagnosticReport.code")
    performers = [organization_of(p.reference, members, "DiagnosticReport.performer") for p in report.performer or []]
    if caller not in performers:
        raise forbidden(f"{caller} publishes only its own results (DiagnosticReport.performer Organization/{caller})")
    if report.issued is None:
        raise unprocessable("DiagnosticReport.issued is required: the validity window counts from it")
    contained = {c.id: c for c in report.contained or [] if c.get_resource_type() == "Observation"}
    for result in report.result or []:
        observation = contained.get((result.reference or "").removeprefix("#"))
        if observation is None:
            raise unprocessable(f"result {result.reference!r} must reference a contained Observation (#id)")
        if observation.status != "final":
            raise unprocessable(f"Observation {observation.id} is not final")
        _loinc(observation.code, f"Observation {observation.id}.code")
        quantity = observation.valueQuantity
        if quantity is None or quantity.system != UCUM or not quantity.code:
            raise unprocessable(f"Observation {observation.id} needs valueQuantity in UCUM ({UCUM}) with a code")
    if not report.result and not report.conclusion and not report.presentedForm:
        raise unprocessable("a DiagnosticReport carries results, a conclusion or a presented form")
    categories = tuple(
        sorted({str(c.code) for cc in report.category or [] for c in cc.coding or [] if c.system == V2_0074 and c.code})
    )
    return ReportInput(
        subject=subject_of(report.subject, "DiagnosticReport.subject"),
        test_code=test_code,
        categories=categories,
        issued=_aware(report.issued),
        resource=dump(report),
    )


def report_out(resource: dict[str, Any], report_id: uuid.UUID, patient: uuid.UUID) -> dict[str, Any]:
    return {
        **resource,
        "id": str(report_id),
        "meta": {"versionId": "1"},
        "subject": {"reference": f"{PATIENT}{patient}"},
    }


@dataclass(frozen=True)
class ResultRow:
    id: uuid.UUID
    patient_id: uuid.UUID
    publisher: str
    test_code: str
    categories: list[str]
    issued: datetime

    def candidate(self) -> Candidate:
        return Candidate(self.id, self.publisher, self.test_code, tuple(self.categories), self.issued)


_COLUMNS = "id, patient_id, publisher, test_code, categories, issued"


def candidates(
    conn: index.Conn, patient: uuid.UUID, test_code: str, since: datetime, publishers: list[str]
) -> list[ResultRow]:
    """This patient's results of this test issued since ``since`` by these publishers (the index does the work)."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM exam_result WHERE patient_id = %s AND test_code = %s AND issued >= %s "  # noqa: S608
        "AND publisher = ANY(%s) ORDER BY issued DESC LIMIT 50",
        (patient, test_code, since, publishers),
    ).fetchall()
    return [ResultRow(*r) for r in rows]


class ExamResults:
    def __init__(self, workflows: Workflows, requests: Requests) -> None:
        self.wf = workflows
        self.requests = requests

    def publish(self, ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
        parsed = parse_report(body, ctx.hospital, ctx.spec.members)
        if not ctx.spec.shares(ctx.hospital, CATEGORY):
            raise forbidden(f"Consortium {self.wf.exchange.settings.consortium} shares no {CATEGORY} of {ctx.hospital}")
        report_id = uuid.uuid4()
        with self.wf.db.transaction() as conn:
            patient = self.wf.patient_of_subject(conn, parsed.subject, "DiagnosticReport.subject", create=True)
            conn.execute(
                "INSERT INTO exam_result (id, patient_id, publisher, test_system, test_code, categories, issued) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (report_id, patient, ctx.hospital, LOINC, parsed.test_code, list(parsed.categories), parsed.issued),
            )
            resource = report_out(parsed.resource, report_id, patient)
            self.wf.save(ctx, resource)
            self.wf.audit(
                ctx,
                Interaction.CREATE,
                ok=True,
                description=f"exam result {parsed.test_code} published",
                patient=patient,
                objects=[f"DiagnosticReport/{report_id}"],
            )
        return resource

    def _row(self, report_id: uuid.UUID) -> ResultRow | None:
        with self.wf.db.connection() as conn:
            found = conn.execute(f"SELECT {_COLUMNS} FROM exam_result WHERE id = %s", (report_id,)).fetchone()  # noqa: S608
        return ResultRow(*found) if found else None

    def read(self, ctx: Context, report_id: uuid.UUID) -> dict[str, Any]:
        row = self._row(report_id)
        objects = [f"DiagnosticReport/{report_id}"]
        if row is None:
            raise not_found(f"DiagnosticReport/{report_id} is not known")
        if row.publisher != ctx.hospital:
            self.wf.authorise(ctx, row.patient_id, row.publisher, CATEGORY, objects, "DiagnosticReport")
        resource = self.wf.load(row.publisher, "DiagnosticReport", report_id)
        self.wf.audit(
            ctx,
            Interaction.READ,
            ok=True,
            description=f"exam result of {row.publisher}",
            patient=row.patient_id,
            objects=objects,
        )
        return resource

    def _producers(self, names: set[str]) -> dict[str, Producer | None]:
        out: dict[str, Producer | None] = {}
        for name in names:
            spec = self.wf.exchange.cluster.hospital(name)
            out[name] = Producer(spec.tier, spec.exam_accredited) if spec else None
        return out

    def lookup(self, ctx: Context, patient: uuid.UUID | None, test_code: str) -> list[dict[str, Any]]:
        """The recognised results of this patient and test, newest first, as far as the decision permits."""
        query = f"code={LOINC}|{test_code}"
        bound = longest_window(ctx.spec.exam_recognition, test_code)
        if patient is None or bound is None:
            self.wf.audit(
                ctx, Interaction.SEARCH, ok=True, description="no recognised result", patient=patient, query=query
            )
            return []
        with self.wf.db.connection() as conn:
            consents = index.consents_of(conn, patient)
        decision = self.wf.exchange.decide(ctx, patient, consents).narrowed(categories=[CATEGORY])
        if decision.denied:
            self.wf.audit(ctx, Interaction.SEARCH, ok=False, description=decision.reason, patient=patient, query=query)
            raise forbidden(f"consent refuses: {decision.reason}")
        now = datetime.now(UTC)
        with self.wf.db.connection() as conn:
            rows = candidates(conn, patient, test_code, now - bound, sorted({p for p, _ in decision.permitted}))
        producers = self._producers({r.publisher for r in rows})
        kept = recognised(ctx.spec.exam_recognition, [r.candidate() for r in rows], producers, now)
        by_id = {r.id: r for r in rows}
        reports = [self.wf.load(by_id[c.id].publisher, "DiagnosticReport", c.id) for c in kept]
        self.wf.audit(
            ctx,
            Interaction.SEARCH,
            ok=True,
            description=f"{len(reports)} recognised results",
            patient=patient,
            objects=[f"DiagnosticReport/{c.id}" for c in kept],
            query=query,
        )
        return reports

    def use(self, ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
        """A Task closing the caller's order (focus) by a recognised report (output): the test is not repeated."""
        task = validated(Task, body, "Task")
        if task.status != "completed" or task.focus is None:
            raise unprocessable("a recognition Task is status completed, focus ServiceRequest/<the new order>")
        order = reference_id(task.focus.reference, "ServiceRequest", "Task.focus")
        reports = [o.valueReference.reference for o in task.output or [] if o.valueReference is not None]
        if len(reports) != 1:
            raise unprocessable("a recognition Task has one output: valueReference DiagnosticReport/<id>")
        report_id = reference_id(reports[0], "DiagnosticReport", "Task.output")
        row = self._row(report_id)
        if row is None:
            raise not_found(f"DiagnosticReport/{report_id} is not known")
        with self.wf.db.connection() as conn:
            request = conn.execute(
                "SELECT patient_id, code FROM service_request WHERE id = %s AND requester = %s", (order, ctx.hospital)
            ).fetchone()
        if request is None:
            raise not_found(f"ServiceRequest/{order} is not an order of {ctx.hospital}")
        if request[0] != row.patient_id or request[1] != row.test_code:
            raise conflict("the report is not of the order's patient and test")
        if row.publisher != ctx.hospital:
            self.wf.authorise(ctx, row.patient_id, row.publisher, CATEGORY, [f"DiagnosticReport/{report_id}"], "read")
        why = not_recognised(
            ctx.spec.exam_recognition,
            row.candidate(),
            self._producers({row.publisher})[row.publisher],
            datetime.now(UTC),
        )
        if why is not None:
            raise conflict(f"DiagnosticReport/{report_id} is not recognised: {why}")
        closed, _request = self.requests.close_order(ctx, order, f"DiagnosticReport/{report_id}")
        if row.publisher != ctx.hospital:
            TESTS_NOT_REPEATED.labels(row.test_code, row.publisher).inc()
        return closed


router = APIRouter(tags=["exam-mutual-recognition"])


@router.post("/fhir/DiagnosticReport", status_code=201, response_class=FhirResponse, responses=FHIR_ERRORS)
def publish_report(request: Request, ctx: Writer, body: FhirBody) -> FhirResponse:
    """Publish a final exam result (LOINC, Observations in UCUM, performer the caller) for recognition."""
    resource = services(request).exams.publish(ctx, body)
    return FhirResponse(resource, status_code=201, headers={"Location": f"/fhir/DiagnosticReport/{resource['id']}"})


@router.get("/fhir/DiagnosticReport/$recognised", response_class=FhirResponse, responses=FHIR_ERRORS)
def recognised_results(
    request: Request,
    ctx: Reader,
    code: Annotated[str, Query(max_length=64, description="The test: http://loinc.org|<code> or <code>")],
    patient: PatientParam = None,
    patient_identifier: PatientIdentifierParam = None,
) -> FhirResponse:
    """The results of this patient and test that the Consortium recognises now, newest first."""
    system, _sep, test = code.rpartition("|")
    if system not in ("", LOINC) or not test:
        raise invalid(f"code must be {LOINC}|<code>")
    wf = services(request).workflows
    with wf.db.connection() as conn:
        found = wf.patient_of_selector(conn, patient, patient_identifier)
    reports = services(request).exams.lookup(ctx, found, test)
    return FhirResponse(bundle(reports, [], "DiagnosticReport"))


@router.get("/fhir/DiagnosticReport/{id}", response_class=FhirResponse, responses=FHIR_ERRORS)
def read_report(request: Request, ctx: Reader, id: ResourceId) -> FhirResponse:
    return FhirResponse(services(request).exams.read(ctx, path_id(id, "DiagnosticReport")))


@router.post("/fhir/Task", status_code=201, response_class=FhirResponse, responses=FHIR_ERRORS)
def use_recognised(request: Request, ctx: Writer, body: FhirBody) -> FhirResponse:
    """Close a new order by a recognised result: a completed Task, focus the order, output the report."""
    task = services(request).exams.use(ctx, body)
    return FhirResponse(task, status_code=201, headers={"Location": f"/fhir/Task/{task['id']}/_history/1"})
