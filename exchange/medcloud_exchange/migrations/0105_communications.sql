-- Remote consultation (docs/apps/remote-consultation.md): the thread of a consultation or referral.
-- The messages are encrypted records in their sender's RecordStore; this is only who wrote when.

CREATE TABLE communication (
    id uuid PRIMARY KEY,
    service_request_id uuid NOT NULL REFERENCES service_request (id),
    sender text NOT NULL,
    sent timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX communication_thread ON communication (service_request_id, sent);
