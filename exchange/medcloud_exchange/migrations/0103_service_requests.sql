-- Orders, referrals and consultations (docs/apps/referrals.md, remote-consultation.md): a ServiceRequest
-- and the Task that tracks it. The resources themselves, reason and notes included, are encrypted records
-- in the RecordStore of the member that wrote each version.

CREATE TABLE service_request (
    id uuid PRIMARY KEY,
    patient_id uuid NOT NULL REFERENCES patient (id),
    kind text NOT NULL CHECK (kind IN ('order', 'referral', 'consultation')),
    requester text NOT NULL,
    performer text NOT NULL,
    code_system text,
    code text,
    status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX service_request_patient ON service_request (patient_id, code);

CREATE TABLE task (
    id uuid PRIMARY KEY,
    service_request_id uuid NOT NULL REFERENCES service_request (id),
    requester text NOT NULL,
    owner text NOT NULL,
    status text NOT NULL,
    -- Who wrote the current version: its record is in that member's RecordStore.
    written_by text NOT NULL,
    version integer NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_owner ON task (owner, updated_at DESC);
CREATE INDEX task_requester ON task (requester, updated_at DESC);
CREATE INDEX task_request ON task (service_request_id);
