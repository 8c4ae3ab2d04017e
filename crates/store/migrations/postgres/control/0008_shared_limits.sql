-- State every node must share (issue 14, several nodes on one database): the sign-in
-- throttle, the Automation API's rate windows and idempotency replies, and the leases of jobs
-- that must run on one node at a time. Expired rows are deleted by housekeeping.

-- One row per throttle key: (account, network) pairs, networks and accounts, each key the
-- SHA-256 (hex) of its parts (no email or address in the clear; 64 characters whatever a
-- client typed). `blocked until` is not stored: it is last_failure + the back-off of
-- `failures`.
CREATE TABLE identity.sign_in_throttle (
    key            text PRIMARY KEY,
    failures       integer NOT NULL,
    last_failure   timestamptz
);

-- Guesses being checked (they count as failures until their outcome is known): one row per
-- admitted guess and key, each void after its own `until` (a node that died mid-guess leaves
-- nothing stuck, however busy the key).
CREATE TABLE identity.sign_in_guess (
    key    text NOT NULL,
    guess  uuid NOT NULL,
    until  timestamptz NOT NULL,
    PRIMARY KEY (key, guess)
);
CREATE INDEX sign_in_guess_guess_idx ON identity.sign_in_guess (guess);
CREATE INDEX sign_in_guess_until_idx ON identity.sign_in_guess (until);

-- Requests per API token (its id) and unix minute.
CREATE TABLE identity.api_rate (
    token_hash    text NOT NULL,
    window_start  bigint NOT NULL,
    hits          bigint NOT NULL,
    PRIMARY KEY (token_hash, window_start)
);

-- Idempotency-Key per token (its id): reserved while its request runs (status NULL, until reserved_until), then
-- the reply kept (secret fields already blanked) until expires_at.
CREATE TABLE identity.api_idempotency (
    token_hash      text NOT NULL,
    key             text NOT NULL,
    request         text NOT NULL,        -- SHA-256 of method, path, query and body
    holder          uuid NOT NULL,
    reserved_until  timestamptz NOT NULL,
    status          integer,
    content_type    text,
    body            bytea,
    redacted        text,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (token_hash, key)
);
CREATE INDEX api_idempotency_expires_idx ON identity.api_idempotency (expires_at);

-- Jobs run by one node at a time (housekeeping, tenant migrations at start-up).
CREATE TABLE identity.job_lease (
    name    text PRIMARY KEY,
    holder  text NOT NULL,
    until   timestamptz NOT NULL
);
