-- FHIR Bulk Data exports (docs/analytics.md): the job, never its data. The output is made when it is
-- downloaded, streamed from the encrypted records through the de-identifier: no export file exists.
CREATE TABLE bulk_export (
    id uuid PRIMARY KEY,
    requester text NOT NULL,
    level text NOT NULL CHECK (level IN ('system', 'patient', 'group')),
    group_id text,
    types text[] NOT NULL,
    since timestamptz,
    purpose text NOT NULL,
    transaction_time timestamptz NOT NULL,
    request text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
