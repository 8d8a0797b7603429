-- Exam-result mutual recognition (docs/apps/exam-mutual-recognition.md): one row per published final
-- DiagnosticReport, what the recognition lookup needs. The report and its Observations are only in the
-- producer's RecordStore, encrypted.

CREATE TABLE exam_result (
    id uuid PRIMARY KEY,
    patient_id uuid NOT NULL REFERENCES patient (id),
    publisher text NOT NULL,
    test_system text NOT NULL,
    test_code text NOT NULL,
    -- HL7 v2 table 0074 diagnostic service sections (DiagnosticReport.category), e.g. {LAB} or {RAD,CT}.
    categories text[] NOT NULL DEFAULT '{}',
    issued timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- The lookup: this patient, this test, issued within the window, newest first.
CREATE INDEX exam_result_lookup ON exam_result (patient_id, test_code, issued DESC);
