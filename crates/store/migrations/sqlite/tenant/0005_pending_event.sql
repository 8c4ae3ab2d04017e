-- Crash recovery (issue 14). A write to this tenant's users commits here first and then in
-- the control database (its audit events, outbox emails, sessions). In the same transaction as
-- the change it records what the control side must hold (`payload`, JSON: the events, with
-- what they publish, and the control-side operations in order); the row is deleted once the
-- control side has committed. A row older than the reconcile margin whose event is not in the
-- control audit trail is written there by the reconcile pass (once: by event id).
CREATE TABLE pending_event (
    event_id    BLOB PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    payload     TEXT NOT NULL
);
CREATE INDEX pending_event_created_idx ON pending_event (created_at);
