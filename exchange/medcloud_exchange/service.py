"""The exchange's transactions: publish (ITI-105), find (ITI-67), retrieve (ITI-68), consents, disclosure.

Every read and search goes through :meth:`Exchange.decide`, the one place where
the decision is made, audited and counted; routes cannot reach the index's
documents another way. Every answer is audited before it is given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from medcloud.models.consortium import ConsortiumSpec
from medcloud.records.keyclient import KeyAccessDeniedError
from medcloud_exchange import index
from medcloud_exchange.audit import AuditStore, Interaction, Requester, decision_event, rest_event
from medcloud_exchange.cluster import Cluster
from medcloud_exchange.database import Database
from medcloud_exchange.decision import (
    AccessRequest,
    BreakGlassWithoutReasonError,
    ConsentStatus,
    ConsentTerms,
    Decision,
    Purpose,
    decide,
)
from medcloud_exchange.metrics import BREAK_GLASS, DECISION_SECONDS, DECISIONS
from medcloud_exchange.outcomes import FhirError, conflict, forbidden, invalid, not_found, unprocessable
from medcloud_exchange.provide import parse_provide_bundle, submission_set_out, transaction_response
from medcloud_exchange.resources import (
    ConsentInput,
    Identifier,
    Publication,
    consent_out,
    document_out,
    parse_consent,
    parse_publication,
    patient_out,
)
from medcloud_exchange.settings import ExchangeSettings
from medcloud_exchange.stores import (
    PublisherStores,
    StoreUnavailableError,
    content_name,
    metadata_name,
    patient_name,
    submission_set_name,
)

log = logging.getLogger("medcloud_exchange")


@dataclass(frozen=True)
class Context:
    """One authorised request: who asks, for which hospital and purpose, under which Consortium rules."""

    requester: Requester
    spec: ConsortiumSpec
    purpose: Purpose

    @property
    def hospital(self) -> str:
        return self.requester.hospital

    def access(self) -> AccessRequest:
        return AccessRequest(self.hospital, self.purpose, self.requester.break_glass_reason)


@dataclass(frozen=True)
class PatientSelector:
    """ITI-67's ``patient`` or ``patient.identifier``: exactly one."""

    reference: uuid.UUID | None = None
    identifier: Identifier | None = None


@dataclass(frozen=True)
class SearchFilters:
    categories: tuple[str, ...] | None = None
    publishers: tuple[str, ...] | None = None
    type_system: str | None = None
    type_code: str | None = None
    dates: tuple[tuple[str, datetime], ...] = ()
    count: int = 20
    offset: int = 0


@dataclass(frozen=True)
class Stored:
    """What a publish wrote: the patient, the documents in order, the SubmissionSet, and whether the patient is new."""

    patient: uuid.UUID
    documents: tuple[uuid.UUID, ...]
    submission_set: uuid.UUID | None
    patient_created: bool


class Exchange:
    def __init__(
        self,
        settings: ExchangeSettings,
        database: Database,
        cluster: Cluster,
        stores: PublisherStores,
        audit: AuditStore,
    ) -> None:
        self.settings = settings
        self.db = database
        self.cluster = cluster
        self.stores = stores
        self.audit = audit
        self.name = f"medcloud-exchange/{settings.consortium}"
        self._key = settings.blind_key()

    def audit_refusal(self, requester: Requester, verb: str, description: str) -> None:
        """An authenticated caller refused before it named a patient (no purpose, no grant, not a member)."""
        interaction = Interaction.READ if verb == "get" else Interaction.CREATE
        event = rest_event(interaction, None, requester, self.name, ok=False, description=description, patient=None)
        self.audit.write(event)

    # ------------------------------------------------------------------ the decision point

    def _audit(
        self,
        interaction: Interaction,
        transaction: str | None,
        ctx: Context,
        *,
        ok: bool,
        description: str,
        patient: uuid.UUID | None,
        objects: Iterable[str] = (),
        query: str | None = None,
    ) -> None:
        """One BALP RESTful AuditEvent of this request, written before the answer (raises when it cannot be)."""
        event = rest_event(
            interaction,
            transaction,
            ctx.requester,
            self.name,
            ok=ok,
            description=description,
            patient=patient,
            objects=objects,
            query=query,
        )
        self.audit.write(event)

    def decide(self, ctx: Context, patient: uuid.UUID, consents: Iterable[ConsentTerms]) -> Decision:
        """Decide, audit the decision (BALP AuthZconsent), count it, and raise the break-glass alarm."""
        started = time.perf_counter()
        try:
            decision = decide(ctx.spec, ctx.access(), consents, datetime.now(UTC))
        except BreakGlassWithoutReasonError as exc:
            self.audit.write(
                decision_event(
                    ctx.requester,
                    self.name,
                    permit=False,
                    description=str(exc),
                    patient=patient,
                    consents=(),
                    categories=(),
                )
            )
            DECISIONS.labels("deny").inc()
            raise forbidden(str(exc)) from None
        DECISION_SECONDS.observe(time.perf_counter() - started)
        permit = not decision.denied
        self.audit.write(
            decision_event(
                ctx.requester,
                self.name,
                permit=permit,
                description=decision.reason,
                patient=patient,
                consents=decision.consents,
                categories={c for _, c in decision.cross_institution},
            )
        )
        DECISIONS.labels("permit" if permit else "deny").inc()
        if decision.break_glass:
            BREAK_GLASS.labels(ctx.hospital).inc()
            # The alarm must not hide the access it reports: a failed Event is logged, the audit already holds it.
            try:
                self.cluster.warn(
                    "BreakGlass",
                    f"{ctx.hospital} ({ctx.requester.practitioner}) broke the glass for Patient/{patient}: "
                    f"{ctx.requester.break_glass_reason}",
                )
            except Exception as exc:
                log.error("break-glass Event not written: %s", type(exc).__name__)
        return decision

    # ------------------------------------------------------------------ ITI-105 publish

    def publish(self, ctx: Context, body: dict[str, Any], custodian: str | None = None) -> dict[str, Any]:
        """ITI-105; ``custodian``: the member whose record it becomes when not the caller's (a consult report
        lands in the requester's record), written into that member's store, the caller audited as its author."""
        publication = parse_publication(body, self.settings.max_document_bytes)
        publisher = custodian or ctx.hospital
        stored = self._publish(ctx, [publication], publisher, "ITI-105")
        return document_out(publication.metadata, stored.documents[0], stored.patient, publisher, self._base())

    def provide(self, ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
        """ITI-65 Provide Document Bundle: every entry stored, or none (index and payload); the transaction-response."""
        provision = parse_provide_bundle(body, self.settings.max_document_bytes)
        stored = self._publish(
            ctx,
            [publication for _, publication in provision.documents],
            ctx.hospital,
            "ITI-65",
            provision.submission_set,
        )
        documents = {url: doc_id for (url, _), doc_id in zip(provision.documents, stored.documents, strict=True)}
        return transaction_response(provision, documents, stored.submission_set, stored.patient, stored.patient_created)

    def _publish(
        self,
        ctx: Context,
        publications: Sequence[Publication],
        publisher: str,
        transaction: str,
        submission_set: dict[str, Any] | None = None,
    ) -> Stored:
        """Store documents of one patient (and their demographics and SubmissionSet) in one transaction.

        The records are written inside the index transaction, which commits last; if anything fails, the
        records already written are hidden, so a publish is all or nothing.
        """
        for publication in publications:
            if not ctx.spec.shares(publisher, publication.category):
                # The exchange holds keys only of stores spec.sharing reaches: what it cannot share it does not take.
                raise forbidden(
                    f"Consortium {self.settings.consortium} shares no {publication.category} records of {publisher}"
                )
        document_ids = [uuid.uuid4() for _ in publications]
        set_id = uuid.uuid4() if submission_set is not None else None
        first = publications[0]
        demographics = next((p.patient_resource for p in publications if p.patient_resource is not None), None)
        records = self.stores.client(publisher)
        written: list[str] = []
        try:
            with self.db.transaction() as conn:
                # Whether the patient is new matters to ITI-65's answer only: the simplified publish skips the query.
                known = first.patient
                if first.identifiers and submission_set is not None:
                    known = index.patient_for(conn, self._key, first.identifiers)
                patient = self._patient_for_write(conn, first.identifiers, first.patient)
                for document_id, publication in zip(document_ids, publications, strict=True):
                    content = records.put(
                        content_name(document_id), publication.content, content_type=publication.content_type
                    )
                    written.append(content_name(document_id))
                    metadata = records.put_fhir(publication.metadata, metadata_name(document_id))
                    written.append(metadata_name(document_id))
                    index.insert_document(
                        conn,
                        self._row(
                            document_id, patient, publisher, publication, content.version_id, metadata.version_id
                        ),
                    )
                if demographics is not None:
                    # Named per publish, never overwritten: hiding a failed publish must not hide the previous one.
                    name = patient_name(patient, document_ids[0])
                    records.put_fhir(demographics, name)
                    written.append(name)
                    index.record_patient(conn, patient, publisher, name)
                if submission_set is not None and set_id is not None:
                    out = submission_set_out(submission_set, set_id, patient, document_ids)
                    records.put_fhir(out, submission_set_name(set_id))
                    written.append(submission_set_name(set_id))
                    index.insert_submission_set(conn, set_id, patient, publisher, document_ids)
                categories = ", ".join(sorted({p.category for p in publications}))
                self._audit(
                    Interaction.CREATE,
                    transaction,
                    ctx,
                    ok=True,
                    description=f"published {len(publications)} {categories} document(s)"
                    + (f" into the record of {publisher}" if publisher != ctx.hospital else ""),
                    patient=patient,
                    objects=[f"DocumentReference/{d}" for d in document_ids]
                    + ([f"List/{set_id}"] if set_id is not None else []),
                )
        except BaseException:
            self._hide(publisher, written)
            raise
        return Stored(patient, tuple(document_ids), set_id, known is None)

    def _row(
        self,
        document_id: uuid.UUID,
        patient: uuid.UUID,
        publisher: str,
        publication: Publication,
        content_version: str | None,
        metadata_version: str | None,
    ) -> index.DocumentRow:
        return index.DocumentRow(
            id=document_id,
            patient_id=patient,
            publisher=publisher,
            store=self.settings.store,
            category=publication.category,
            type_system=publication.type_system,
            type_code=publication.type_code,
            date=publication.date,
            content_type=publication.content_type,
            size=len(publication.content),
            content_version=content_version,
            metadata_version=metadata_version,
        )

    def _hide(self, hospital: str, names: list[str]) -> None:
        """Put delete markers on records of a publish that did not commit (their locked versions stay unreachable)."""
        if not names:
            return
        client = self.stores.client(hospital)
        for name in names:
            with contextlib.suppress(Exception):
                client.delete(name)

    def _patient_for_write(
        self, conn: index.Conn, identifiers: tuple[Identifier, ...], patient: uuid.UUID | None
    ) -> uuid.UUID:
        if identifiers:
            return index.ensure_patient(conn, self._key, identifiers)
        assert patient is not None
        if not index.patient_exists(conn, patient):
            raise unprocessable(f"Patient/{patient} is not known to the exchange; name the patient by identifier")
        return patient

    # ------------------------------------------------------------------ ITI-67 find

    def _patient_for_read(self, conn: index.Conn, selector: PatientSelector) -> uuid.UUID | None:
        if selector.identifier is not None:
            return index.patient_for(conn, self._key, [selector.identifier])
        assert selector.reference is not None
        return selector.reference if index.patient_exists(conn, selector.reference) else None

    def find(
        self, ctx: Context, selector: PatientSelector, filters: SearchFilters, query: str
    ) -> tuple[list[dict[str, Any]], int]:
        with self.db.connection() as conn:
            patient = self._patient_for_read(conn, selector)
            consents = index.consents_of(conn, patient) if patient else []
        audited_query = "&".join(q for q in (f"patient=Patient/{patient or 'unknown'}", query) if q)
        if patient is None:
            self._audit(
                Interaction.SEARCH,
                "ITI-67",
                ctx,
                ok=True,
                description="no such patient",
                patient=None,
                query=audited_query,
            )
            return [], 0
        decision = self.decide(ctx, patient, consents).narrowed(
            publishers=filters.publishers, categories=filters.categories
        )
        if decision.denied:
            self._audit(
                Interaction.SEARCH,
                "ITI-67",
                ctx,
                ok=False,
                description=decision.reason,
                patient=patient,
                query=audited_query,
            )
            raise forbidden(f"consent refuses: {decision.reason}")
        with self.db.connection() as conn:
            rows, total = index.find_documents(
                conn,
                index.DocumentQuery(
                    patient=patient,
                    pairs=decision.permitted,
                    type_system=filters.type_system,
                    type_code=filters.type_code,
                    dates=filters.dates,
                    count=filters.count,
                    offset=filters.offset,
                ),
            )
        resources = [self._document(row) for row in rows]
        self._audit(
            Interaction.SEARCH,
            "ITI-67",
            ctx,
            ok=True,
            description=f"{total} documents",
            patient=patient,
            objects=[f"DocumentReference/{row.id}" for row in rows],
            query=audited_query,
        )
        return resources, total

    def _document(self, row: index.DocumentRow) -> dict[str, Any]:
        metadata = self.stores.client(row.publisher).get_json(metadata_name(row.id))
        return document_out(metadata, row.id, row.patient_id, row.publisher, self._base())

    def _base(self) -> str:
        return f"{self.settings.base_url.rstrip('/')}/fhir" if self.settings.base_url else "/fhir"

    # ------------------------------------------------------------------ ITI-68 retrieve, and read

    def _authorised_row(self, ctx: Context, document_id: uuid.UUID, interaction: str) -> index.DocumentRow:
        with self.db.connection() as conn:
            row = index.document(conn, document_id)
            consents = index.consents_of(conn, row.patient_id) if row else []
        if row is None:
            raise self._unknown(ctx, interaction, f"DocumentReference/{document_id}")
        decision = self.decide(ctx, row.patient_id, consents)
        pair = (row.publisher, row.category)
        if pair not in decision.permitted:
            shareable = pair in decision.shareable
            self._audit(
                Interaction.READ,
                interaction,
                ctx,
                ok=False,
                description=decision.reason if shareable else "not shared with this member",
                patient=row.patient_id,
                objects=[f"DocumentReference/{document_id}"],
            )
            if shareable:
                raise forbidden(f"consent refuses: {decision.reason}")
            # Outside spec.sharing the document does not exist for this reader.
            raise not_found(f"DocumentReference/{document_id} is not known")
        return row

    def _unknown(self, ctx: Context, interaction: str, reference: str) -> FhirError:
        """Audit a read of something the exchange does not know; the 404 to raise."""
        self._audit(
            Interaction.READ,
            interaction,
            ctx,
            ok=False,
            description=f"no such {reference.split('/')[0]}",
            patient=None,
            objects=[reference],
        )
        return not_found(f"{reference} is not known")

    def _audit_read(self, ctx: Context, row: index.DocumentRow, interaction: str) -> None:
        self._audit(
            Interaction.READ,
            interaction,
            ctx,
            ok=True,
            description=f"{row.category} document of {row.publisher}",
            patient=row.patient_id,
            objects=[f"DocumentReference/{row.id}"],
        )

    def retrieve(self, ctx: Context, document_id: uuid.UUID) -> tuple[bytes, str]:
        row = self._authorised_row(ctx, document_id, "ITI-68")
        data = self.stores.client(row.publisher).get_bytes(content_name(row.id))
        self._audit_read(ctx, row, "ITI-68")
        return data, row.content_type

    def read_document(self, ctx: Context, document_id: uuid.UUID) -> dict[str, Any]:
        row = self._authorised_row(ctx, document_id, "ITI-67")
        resource = self._document(row)
        self._audit_read(ctx, row, "ITI-67")
        return resource

    def read_submission_set(self, ctx: Context, set_id: uuid.UUID) -> dict[str, Any]:
        """An ITI-65 SubmissionSet, listing only the documents the decision lets this reader see."""
        with self.db.connection() as conn:
            found = index.submission_set(conn, set_id)
            rows = index.documents(conn, found[2]) if found else []
            consents = index.consents_of(conn, found[0]) if found else []
        if found is None:
            raise self._unknown(ctx, "ITI-66", f"List/{set_id}")
        patient, publisher, _ = found
        decision = self.decide(ctx, patient, consents)
        visible = {row.id for row in rows if (row.publisher, row.category) in decision.permitted}
        if not visible:
            shareable = any((row.publisher, row.category) in decision.shareable for row in rows)
            self._audit(
                Interaction.READ,
                "ITI-66",
                ctx,
                ok=False,
                description=decision.reason if shareable else "not shared with this member",
                patient=patient,
                objects=[f"List/{set_id}"],
            )
            if shareable:
                raise forbidden(f"consent refuses: {decision.reason}")
            raise not_found(f"List/{set_id} is not known")
        stored = self.stores.client(publisher).get_json(submission_set_name(set_id))
        shown = {f"DocumentReference/{document}" for document in visible}
        stored["entry"] = [e for e in stored.get("entry") or [] if e["item"]["reference"] in shown]
        self._audit(
            Interaction.READ,
            "ITI-66",
            ctx,
            ok=True,
            description=f"SubmissionSet of {publisher}, {len(visible)} of {len(rows)} documents visible",
            patient=patient,
            objects=[f"List/{set_id}"],
        )
        return dict(stored)

    # ------------------------------------------------------------------ consents

    def create_consent(self, ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
        parsed = parse_consent(body, ctx.spec, str(uuid.uuid4()))
        with self.db.transaction() as conn:
            patient = self._patient_for_write(conn, parsed.identifiers, parsed.patient)
            index.insert_consent(conn, parsed.terms, patient, ctx.hospital)
            self._audit_consent(ctx, Interaction.CREATE, parsed.terms.id, patient, parsed.terms.status)
        return consent_out(parsed.terms, patient, 1, ctx.hospital)

    def update_consent(
        self, ctx: Context, consent_id: uuid.UUID, body: dict[str, Any], expected_version: int | None
    ) -> dict[str, Any]:
        if body.get("id") not in (None, str(consent_id)):
            raise invalid(f"the body's id {body.get('id')!r} is not Consent/{consent_id}")
        parsed = parse_consent(body, ctx.spec, str(consent_id))
        with self.db.transaction() as conn:
            current = index.consent(conn, consent_id, lock=True)
            if current is None:
                raise not_found(f"Consent/{consent_id} is not known")
            self._same_patient(conn, parsed, current.patient_id)
            version = index.update_consent(conn, parsed.terms, expected_version)
            self._audit_consent(ctx, Interaction.UPDATE, parsed.terms.id, current.patient_id, parsed.terms.status)
        return consent_out(parsed.terms, current.patient_id, version, current.recorded_by)

    def revoke_consent(self, ctx: Context, consent_id: uuid.UUID, expected_version: int | None) -> None:
        with self.db.transaction() as conn:
            current = index.consent(conn, consent_id, lock=True)
            if current is None:
                raise not_found(f"Consent/{consent_id} is not known")
            terms = dataclasses.replace(current.terms, status=ConsentStatus.INACTIVE)
            index.update_consent(conn, terms, expected_version)
            self._audit_consent(ctx, Interaction.DELETE, str(consent_id), current.patient_id, ConsentStatus.INACTIVE)

    def read_consent(self, ctx: Context, consent_id: uuid.UUID) -> dict[str, Any]:
        with self.db.connection() as conn:
            current = index.consent(conn, consent_id)
        if current is None:
            raise not_found(f"Consent/{consent_id} is not known")
        self._audit_consent(ctx, Interaction.READ, str(consent_id), current.patient_id, current.terms.status)
        return consent_out(current.terms, current.patient_id, current.version, current.recorded_by)

    def _same_patient(self, conn: index.Conn, parsed: ConsentInput, patient: uuid.UUID) -> None:
        named = parsed.patient or index.patient_for(conn, self._key, parsed.identifiers)
        if named != patient:
            raise conflict("a Consent cannot be moved to another patient; record a new one")

    def _audit_consent(
        self, ctx: Context, interaction: Interaction, consent_id: str, patient: uuid.UUID, status: ConsentStatus
    ) -> None:
        self._audit(
            interaction,
            None,
            ctx,
            ok=True,
            description=f"consent {status.value}",
            patient=patient,
            objects=[f"Consent/{consent_id}"],
        )

    # ------------------------------------------------------------------ disclosure

    def disclosure(self, ctx: Context, selector: PatientSelector, count: int) -> list[dict[str, Any]]:
        """The patient's AuditEvents: who looked at their records, and what was decided."""
        with self.db.connection() as conn:
            patient = self._patient_for_read(conn, selector)
        if patient is None:
            return []
        events = self.audit.for_patient(patient, count)
        self._audit(
            Interaction.SEARCH,
            None,
            ctx,
            ok=True,
            description="access disclosure",
            patient=patient,
            objects=["AuditEvent"],
        )
        return events

    # ------------------------------------------------------------------ Patient (the consortium patient index)

    def read_patient(self, ctx: Context, patient: uuid.UUID) -> dict[str, Any]:
        with self.db.connection() as conn:
            known = index.patient_exists(conn, patient)
        if not known:
            raise self._unknown(ctx, "ITI-78", f"Patient/{patient}")
        return self._answer_patient(ctx, Interaction.READ, patient, (), None)

    def find_patients(self, ctx: Context, identifier: Identifier) -> list[dict[str, Any]]:
        """ITI-78 by identifier: through the blind index, so the identifier is looked up without being stored."""
        with self.db.connection() as conn:
            patient = index.patient_for(conn, self._key, [identifier])
        query = f"identifier=Patient/{patient or 'unknown'}"
        if patient is None:
            self._audit(
                Interaction.SEARCH, "ITI-78", ctx, ok=True, description="no such patient", patient=None, query=query
            )
            return []
        return [self._answer_patient(ctx, Interaction.SEARCH, patient, (identifier,), query)]

    def _answer_patient(
        self,
        ctx: Context,
        interaction: Interaction,
        patient: uuid.UUID,
        asked: tuple[Identifier, ...],
        query: str | None,
    ) -> dict[str, Any]:
        with self.db.connection() as conn:
            consents = index.consents_of(conn, patient)
            records = index.patient_records(conn, patient)
        resource, sources = self._patient_resource(ctx, patient, consents, records, asked)
        self._audit(
            interaction,
            "ITI-78",
            ctx,
            ok=True,
            description=_demographics(sources),
            patient=patient,
            objects=[f"Patient/{patient}"],
            query=query,
        )
        return resource

    def _patient_resource(
        self,
        ctx: Context,
        patient: uuid.UUID,
        consents: list[ConsentTerms],
        records: list[tuple[str, str]],
        asked: tuple[Identifier, ...],
    ) -> tuple[dict[str, Any], list[str]]:
        """The Patient as this reader may see it: demographics only from members whose records about the
        patient the decision lets it see (its own always), decrypted from their stores; else the bare id."""
        visible = {ctx.hospital}
        if any(publisher != ctx.hospital for publisher, _ in records):
            decision = self.decide(ctx, patient, consents)
            visible |= {publisher for publisher, _ in decision.permitted}
        sent: list[tuple[str, dict[str, Any]]] = []
        for publisher, name in records:
            if publisher not in visible:
                continue
            try:
                sent.append((publisher, self.stores.client(publisher).get_json(name)))
            except (StoreUnavailableError, KeyAccessDeniedError) as exc:
                # A store the exchange no longer holds a grant for (spec.sharing changed): its demographics
                # are simply not shown, rather than failing the whole answer.
                log.info("demographics of %s not shown: %s", publisher, type(exc).__name__)
        return patient_out(patient, [resource for _, resource in sent], asked), [p for p, _ in sent]


def _demographics(sources: list[str]) -> str:
    return f"demographics of {', '.join(sources)}" if sources else "no demographics visible to this member"
