-- Batch rows (expand only: `usage_journal` stays, and its per-event rows, written by nodes
-- before this one, are still swept). One row holds the events of one accepted batch for the
-- region, in a compact encoding (`usage::encode_entries`): one insert per batch instead of one
-- row and ten parameters per event. A sweep that applies some of a row's tenants but must hold
-- others back rewrites the row to keep just theirs.
CREATE TABLE usage_journal_batch (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: a sweep deletes by seq
    region       TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    entries      INTEGER NOT NULL,                    -- events in `payload`
    payload      BLOB NOT NULL
);
