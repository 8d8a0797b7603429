"""FHIR Bulk ``$export`` jobs: who may export, what a job carries, and its output made as it is read.

A job row keeps what was asked (types, ``_since``, the group, the purpose) and its transaction time;
the output is produced when a file is downloaded: the rows of its type up to the transaction time, each
record read from its holder's RecordStore and decrypted in this process, de-identified, written as one
NDJSON line. The plaintext record lives only in memory for the length of one line; no export file is
ever written anywhere (docs/analytics.md).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from medcloud.auth import Caller
from medcloud.models.deidentification import DeidentificationPolicy
from medcloud_exchange.audit import Interaction, Requester, rest_event
from medcloud_exchange.bulk import devices, sources
from medcloud_exchange.bulk.deidentify import Deidentifier
from medcloud_exchange.bulk.protocol import KickOff, Level
from medcloud_exchange.cluster import namespace_of
from medcloud_exchange.outcomes import FhirError, forbidden, not_found
from medcloud_exchange.service import Exchange
from medcloud_exchange.stores import PublisherStores, StoreUnavailableError

log = logging.getLogger(__name__)

PUBLIC_HEALTH = "PUBHLTH"
"""HL7 v3 PurposeOfUse of every export: public health (the commission's indicators)."""

# Where a resource names its patient: relinked to the exchange patient before de-identification, so a
# subject given by identifier becomes the patient's pseudonym instead of a masked reference.
_PATIENT_ELEMENTS = ("subject", "patient", "beneficiary", "for")


def _conflict(diagnostics: str) -> FhirError:
    return FhirError(409, "conflict", diagnostics)


@dataclass(frozen=True)
class Job:
    id: uuid.UUID
    requester: str
    kick_off: KickOff
    transaction_time: datetime
    request: str

    def selection(self, resource_type: str | None = None) -> sources.Selection:
        types = (resource_type,) if resource_type else self.kick_off.types
        return sources.Selection(types, self.transaction_time, self.kick_off.since, self.kick_off.group)


def relink(resource: dict[str, Any], patient: uuid.UUID) -> dict[str, Any]:
    """``resource`` with its patient element pointing at the exchange's patient (local ``#`` links kept)."""
    out = dict(resource)
    for key in _PATIENT_ELEMENTS:
        value = out.get(key)
        if isinstance(value, dict) and not str(value.get("reference", "")).startswith("#"):
            out[key] = {"reference": f"Patient/{patient}"}
    return out


def ndjson_line(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def device_lines(observations: Iterable[devices.DeviceObservation], deidentifier: Deidentifier) -> Iterator[bytes]:
    """The NDJSON of device Observations, each de-identified keyed by its member-scoped patient."""
    for observation in observations:
        yield ndjson_line(deidentifier.resource(observation.resource, patient=observation.patient))


class BulkExports:
    """The exchange's ``$export``: RBAC on ``consortia/export``, audited, de-identified by the Consortium's policy."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self._key = exchange.settings.blind_key()
        self._device_stores: dict[str, PublisherStores] = {}

    # ------------------------------------------------------------------ who

    def requester(self, caller: Caller, practitioner: str, address: str | None) -> Requester:
        """The export's requester once RBAC allows it; a refusal is audited before the 403."""
        requester = Requester(
            username=caller.username,
            hospital=namespace_of(caller) or "-",
            practitioner=practitioner,
            purpose=PUBLIC_HEALTH,
            address=address,
        )
        if not self.exchange.cluster.may_export(caller):
            description = (
                f"{caller.username} may not get consortia/export {self.exchange.settings.consortium}: "
                "bind the ClusterRole medcloud-city-health-commission"
            )
            self.exchange.audit_refusal(requester, "get", description)
            raise forbidden(description)
        return requester

    def policy(self) -> DeidentificationPolicy:
        spec = self.exchange.cluster.consortium()
        if spec is None or spec.deidentification is None:
            name = self.exchange.settings.consortium
            raise _conflict(f"Consortium {name} has no spec.deidentification: the exchange exports nothing")
        return spec.deidentification

    # ------------------------------------------------------------------ the job

    def kick_off(self, requester: Requester, kick_off: KickOff, request: str) -> Job:
        job = Job(uuid.uuid4(), requester.username, kick_off, datetime.now(UTC), request)
        objects = [f"Group/{kick_off.group}"] if kick_off.group else []
        self._audit(
            requester, f"$export kick-off ({kick_off.level.value}, purpose {kick_off.purpose})", objects, request
        )
        with self.exchange.db.connection() as conn:
            conn.execute(
                "INSERT INTO bulk_export (id, requester, level, group_id, types, since, purpose, transaction_time, "
                "request) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    job.id,
                    job.requester,
                    kick_off.level.value,
                    kick_off.group,
                    list(kick_off.types),
                    kick_off.since,
                    kick_off.purpose,
                    job.transaction_time,
                    request,
                ),
            )
        return job

    def job(self, requester: Requester, job_id: uuid.UUID) -> Job:
        """The caller's own job; someone else's is as unknown as a job that never was."""
        with self.exchange.db.connection() as conn:
            row = conn.execute(
                "SELECT requester, level, group_id, types, since, purpose, transaction_time, request "
                "FROM bulk_export WHERE id = %s",
                (job_id,),
            ).fetchone()
        if row is None or row[0] != requester.username:
            raise not_found(f"export {job_id} is not known")
        who, level, group, types, since, purpose, transaction_time, request = row
        return Job(job_id, who, KickOff(Level(level), tuple(types), since, purpose, group), transaction_time, request)

    def counts(self, job: Job) -> list[tuple[str, int]]:
        with self.exchange.db.connection() as conn:
            return [
                (t, self._device_count(job) if t == devices.OBSERVATION else sources.count(conn, t, job.selection(t)))
                for t in job.kick_off.types
            ]

    # ------------------------------------------------------------------ device Observations

    def _device_stores_of(self, job: Job) -> list[tuple[str, devices.DeviceStore]]:
        """Each member's device store the export reads (the group's alone); one unreachable is left out, logged."""
        spec = self.exchange.cluster.consortium()
        store = spec.deidentification.device_store if spec and spec.deidentification else None
        if spec is None or store is None:
            return []
        clients = self._device_stores.setdefault(
            store, PublisherStores(self.exchange.cluster, self.exchange.settings.model_copy(update={"store": store}))
        )
        out: list[tuple[str, devices.DeviceStore]] = []
        for member in sorted(spec.members):
            if job.kick_off.group not in (None, member):
                continue
            try:
                out.append((member, clients.client(member)))
            except StoreUnavailableError as exc:
                log.info("export %s: no device Observations of %s: %s", job.id, member, exc)
        return out

    def _device_observations(self, job: Job) -> Iterator[devices.DeviceObservation]:
        return devices.read(self._device_stores_of(job), job.transaction_time, job.kick_off.since)

    def _device_count(self, job: Job) -> int:
        # Batches hold several readings: counting means reading (and decrypting) them.
        return sum(1 for _ in self._device_observations(job))

    def cancel(self, requester: Requester, job_id: uuid.UUID) -> None:
        self.job(requester, job_id)
        with self.exchange.db.connection() as conn:
            conn.execute("DELETE FROM bulk_export WHERE id = %s", (job_id,))
        self._audit(requester, f"$export {job_id} cancelled", [], None, Interaction.DELETE)

    # ------------------------------------------------------------------ the output

    def output(self, requester: Requester, job: Job, resource_type: str, today: date | None = None) -> Iterator[bytes]:
        """The job's NDJSON of one type, de-identified line by line; audited before the first line."""
        if resource_type not in job.kick_off.types:
            raise not_found(f"export {job.id} has no {resource_type} output")
        deidentifier = Deidentifier.for_purpose(self.policy(), self._key, job.kick_off.purpose, today)
        self._audit(requester, f"$export {job.id} output {resource_type}", [], job.request, Interaction.READ)
        if resource_type == devices.OBSERVATION:
            return device_lines(self._device_observations(job), deidentifier)
        with self.exchange.db.connection() as conn:
            rows = list(sources.rows(conn, resource_type, job.selection(resource_type)))
        return self._lines(rows, deidentifier)

    def _lines(self, rows: list[sources.Row], deidentifier: Deidentifier) -> Iterator[bytes]:
        for row in rows:
            if row.record is None or row.holder is None:
                resource: dict[str, Any] = {"resourceType": row.resource_type, "id": str(row.id)}
            else:
                stored = self.exchange.stores.client(row.holder).get_json(row.record)
                resource = relink(stored, row.patient)
            clean = deidentifier.resource(resource, patient=str(row.patient))
            yield ndjson_line(clean)

    def _audit(
        self,
        requester: Requester,
        description: str,
        objects: list[str],
        query: str | None,
        interaction: Interaction = Interaction.OPERATION,
    ) -> None:
        self.exchange.audit.write(
            rest_event(
                interaction,
                None,
                requester,
                self.exchange.name,
                ok=True,
                description=description,
                patient=None,
                objects=objects,
                query=query,
            )
        )
