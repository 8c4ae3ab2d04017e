-- A region's usage ingestion journal (its own file, usage/<region>.db): accepted events wait
-- here until a sweep moves them into their tenant's database, in bulk.
CREATE TABLE usage_journal (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: a sweep deletes by seq
    region       TEXT NOT NULL,
    tenant_id    BLOB NOT NULL,
    api_key_id   BLOB,
    source       TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    meter        TEXT NOT NULL,
    event_time   INTEGER NOT NULL,
    value        INTEGER NOT NULL,
    dims         TEXT NOT NULL,
    received_at  INTEGER NOT NULL
);

-- Who sweeps the journal now (a lease), and up to when everything received is applied.
CREATE TABLE usage_journal_state (
    region         TEXT PRIMARY KEY,
    holder         BLOB,
    lease_until    INTEGER,
    swept_through  INTEGER
);
