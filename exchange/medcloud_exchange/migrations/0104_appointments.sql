-- Appointments (docs/apps/appointments.md): members publish Schedules and Slots (no patient data, so
-- kept whole here); an Appointment books a Slot for a patient, its resource encrypted in the store of the
-- member that wrote each version.

CREATE TABLE schedule (
    id uuid PRIMARY KEY,
    owner text NOT NULL,
    service_system text,
    service_code text,
    service_display text,
    comment text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedule_owner ON schedule (owner);

CREATE TABLE slot (
    id uuid PRIMARY KEY,
    schedule_id uuid NOT NULL REFERENCES schedule (id),
    owner text NOT NULL,
    status text NOT NULL CHECK (status IN ('free', 'busy', 'busy-unavailable')),
    starts timestamptz NOT NULL,
    ends timestamptz NOT NULL CHECK (ends > starts)
);
CREATE INDEX slot_schedule ON slot (schedule_id, starts);

CREATE TABLE appointment (
    id uuid PRIMARY KEY,
    slot_id uuid REFERENCES slot (id),
    patient_id uuid NOT NULL REFERENCES patient (id),
    booked_by text NOT NULL,
    host text NOT NULL,
    service_request_id uuid REFERENCES service_request (id),
    status text NOT NULL,
    starts timestamptz NOT NULL,
    ends timestamptz NOT NULL,
    written_by text NOT NULL,
    version integer NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- The guarantee: at most one live Appointment holds a Slot, whatever runs concurrently. The row lock on
-- the slot turns the common race into a clear 409 first; this index is what makes it impossible.
CREATE UNIQUE INDEX appointment_one_per_slot ON appointment (slot_id)
    WHERE status IN ('proposed', 'pending', 'booked', 'arrived', 'fulfilled', 'checked-in');
CREATE INDEX appointment_request ON appointment (service_request_id);
