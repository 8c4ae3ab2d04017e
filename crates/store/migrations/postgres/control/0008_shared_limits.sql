-- State every node must share (issue 14, several nodes on one database): the sign-in
-- throttle, the Automation API's rate windows and idempotency replies, and the leases of jobs
-- that must run on one node at a time. Expired rows are deleted by housekeeping.

-- One row per throttle key: (account, network) pairs, networks and accounts. `blocked until`
-- is not stored: it is last_failure + the back-off of `failures`. `pending` counts guesses
-- being checked (they count as failures until their outcome is known) and is void after
-- `pending_until` (a node that died mid-guess leaves nothing stuck).
CREATE TABLE identity.sign_in_throttle (
    key            text PRIMARY KEY,
    failures       integer NOT NULL,
    last_failure   timestamptz,
    pending        integer NOT NULL,
    pending_until  timestamptz NOT NULL
);

-- Requests per API token (SHA-256) and unix minute.
CREATE TABLE identity.api_rate (
    token_hash    text NOT NULL,
    window_start  bigint NOT NULL,
    hits          bigint NOT NULL,
    PRIMARY KEY (token_hash, window_start)
);

-- Idempotency-Key: reserved while its request runs (status NULL, until reserved_until), then
-- the reply kept (secret fields already blanked) until expires_at.
CREATE TABLE identity.api_idempotency (
    token_hash      text NOT NULL,
    key             text NOT NULL,
    request         text NOT NULL,
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
