-- Where each publisher keeps the demographics it sent for a patient (an encrypted record in its own
-- RecordStore: the row names the record, never its content), and the SubmissionSets of ITI-65.

CREATE TABLE patient_record (
    patient_id uuid NOT NULL REFERENCES patient (id),
    publisher text NOT NULL,
    record text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (patient_id, publisher)
);

CREATE TABLE submission_set (
    id uuid PRIMARY KEY,
    patient_id uuid NOT NULL REFERENCES patient (id),
    publisher text NOT NULL,
    documents uuid[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX submission_set_patient ON submission_set (patient_id);
