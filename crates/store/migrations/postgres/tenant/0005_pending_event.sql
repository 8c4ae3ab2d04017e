-- Crash recovery (issue 14). A write to this tenant's users commits here first and then in
-- the control database (its audit events, outbox emails, sessions). In the same transaction as
-- the change it records what the control side must hold (`payload`, JSON: the events, with
-- what they publish, and the control-side operations in order); the row is deleted once the
-- control side has committed. A row older than the reconcile margin whose event is not in the
-- control audit trail is written there by the reconcile pass (once: by event id).
CREATE TABLE security.pending_event (
    event_id    uuid PRIMARY KEY,
    created_at  timestamptz NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    payload     text NOT NULL
);
CREATE INDEX pending_event_created_idx ON security.pending_event (created_at);
