-- The exchange's index: opaque patients, a keyed blind index of their identifiers,
-- document metadata that searches need, and consents reduced to what the decision reads.
-- No identifier, name or document text is ever stored here (docs/exchange.md).

CREATE TABLE patient (
    id uuid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE patient_identifier (
    -- HMAC-SHA-256(consortium key, system '|' value): lookup without the value.
    blind bytea PRIMARY KEY CHECK (length(blind) = 32),
    patient_id uuid NOT NULL REFERENCES patient (id)
);
CREATE INDEX patient_identifier_patient ON patient_identifier (patient_id);

CREATE TABLE document (
    id uuid PRIMARY KEY,
    patient_id uuid NOT NULL REFERENCES patient (id),
    publisher text NOT NULL,
    store text NOT NULL,
    category text NOT NULL,
    type_system text NOT NULL,
    type_code text NOT NULL,
    date timestamptz NOT NULL,
    content_type text NOT NULL,
    size bigint NOT NULL CHECK (size >= 0),
    content_version text,
    metadata_version text,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- ITI-67 always names the patient; the rest narrows within that patient's documents.
CREATE INDEX document_patient ON document (patient_id, publisher, category, date DESC);

CREATE TABLE consent (
    id uuid PRIMARY KEY,
    patient_id uuid NOT NULL REFERENCES patient (id),
    status text NOT NULL,
    decision text NOT NULL CHECK (decision IN ('permit', 'deny')),
    actors text[] NOT NULL DEFAULT '{}',
    purposes text[] NOT NULL DEFAULT '{}',
    categories text[] NOT NULL DEFAULT '{}',
    period_start timestamptz,
    period_end timestamptz,
    recorded_by text NOT NULL,
    version integer NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_patient ON consent (patient_id);
