-- State every node must share (issue 14, several nodes on one database): the sign-in
-- throttle, the Automation API's rate windows and idempotency replies, and the leases of jobs
-- that must run on one node at a time. Expired rows are deleted by housekeeping.

-- One row per throttle key: (account, network) pairs, networks and accounts. `blocked until`
-- is not stored: it is last_failure + the back-off of `failures`. `pending` counts guesses
-- being checked (they count as failures until their outcome is known) and is void after
-- `pending_until` (a node that died mid-guess leaves nothing stuck).
CREATE TABLE sign_in_throttle (
    key            TEXT PRIMARY KEY,
    failures       INTEGER NOT NULL,
    last_failure   INTEGER,               -- unix µs; NULL: no failure on record
    pending        INTEGER NOT NULL,
    pending_until  INTEGER NOT NULL       -- unix µs
);

-- Requests per API token (SHA-256) and unix minute.
CREATE TABLE api_rate (
    token_hash    TEXT NOT NULL,
    window_start  INTEGER NOT NULL,
    hits          INTEGER NOT NULL,
    PRIMARY KEY (token_hash, window_start)
);

-- Idempotency-Key: reserved while its request runs (status NULL, until reserved_until), then
-- the reply kept (secret fields already blanked) until expires_at.
CREATE TABLE api_idempotency (
    token_hash      TEXT NOT NULL,
    key             TEXT NOT NULL,
    request         TEXT NOT NULL,        -- method, path and query, SHA-256 of the body
    holder          BLOB NOT NULL,        -- the reservation's id
    reserved_until  INTEGER NOT NULL,
    status          INTEGER,
    content_type    TEXT,
    body            BLOB,
    redacted        TEXT,
    expires_at      INTEGER NOT NULL,
    PRIMARY KEY (token_hash, key)
);
CREATE INDEX api_idempotency_expires_idx ON api_idempotency (expires_at);

-- Jobs run by one node at a time (housekeeping, tenant migrations at start-up).
CREATE TABLE job_lease (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    until   INTEGER NOT NULL
);
