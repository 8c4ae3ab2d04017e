-- State every node must share (issue 14, several nodes on one database): the sign-in
-- throttle, the Automation API's rate windows and idempotency replies, and the leases of jobs
-- that must run on one node at a time. Expired rows are deleted by housekeeping.

-- One row per throttle key: (account, network) pairs, networks and accounts, each key the
-- SHA-256 (hex) of its parts (no email or address in the clear; 64 characters whatever a
-- client typed). `blocked until` is not stored: it is last_failure + the back-off of
-- `failures`.
CREATE TABLE sign_in_throttle (
    key            TEXT PRIMARY KEY,
    failures       INTEGER NOT NULL,
    last_failure   INTEGER                -- unix µs; NULL: no failure on record
);

-- Guesses being checked (they count as failures until their outcome is known): one row per
-- admitted guess and key, each void after its own `until` (a node that died mid-guess leaves
-- nothing stuck, however busy the key).
CREATE TABLE sign_in_guess (
    key    TEXT NOT NULL,
    guess  BLOB NOT NULL,
    until  INTEGER NOT NULL,              -- unix µs
    PRIMARY KEY (key, guess)
);
CREATE INDEX sign_in_guess_guess_idx ON sign_in_guess (guess);
CREATE INDEX sign_in_guess_until_idx ON sign_in_guess (until);

-- Requests per API token (its id) and unix minute.
CREATE TABLE api_rate (
    token_hash    TEXT NOT NULL,
    window_start  INTEGER NOT NULL,
    hits          INTEGER NOT NULL,
    PRIMARY KEY (token_hash, window_start)
);

-- Idempotency-Key per token (its id): reserved while its request runs (status NULL, until reserved_until), then
-- the reply kept (secret fields already blanked) until expires_at.
CREATE TABLE api_idempotency (
    token_hash      TEXT NOT NULL,
    key             TEXT NOT NULL,
    request         TEXT NOT NULL,        -- SHA-256 of method, path, query and body
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
