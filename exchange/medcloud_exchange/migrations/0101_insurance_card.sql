-- One insurance card (docs/apps/insurance-card.md): a Coverage per province insurance card, found by
-- the card's blind index. The card number, the patient's name and the payer are only inside the
-- Coverage record, encrypted in the registering member's RecordStore.

CREATE TABLE coverage (
    id uuid PRIMARY KEY,
    patient_id uuid NOT NULL REFERENCES patient (id),
    -- HMAC-SHA-256(consortium key, card system '|' card number), as patient_identifier.blind.
    card_blind bytea NOT NULL CHECK (length(card_blind) = 32),
    status text NOT NULL CHECK (status IN ('active', 'cancelled', 'draft', 'entered-in-error')),
    period_start timestamptz,
    period_end timestamptz,
    registered_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- A card has one active Coverage at a time: registering it twice is a conflict, not a second truth.
CREATE UNIQUE INDEX coverage_active_card ON coverage (card_blind) WHERE status = 'active';
CREATE INDEX coverage_card ON coverage (card_blind, created_at DESC);
