-- The control database (SQLite). Times are unix microseconds (INTEGER) so they compare safely.

CREATE TABLE tenant (
    id          BLOB PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    region      TEXT NOT NULL,
    tier        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'read_only', 'suspended')),
    metadata    TEXT NOT NULL DEFAULT '{}',
    db_name     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    deleted_at  INTEGER
);

CREATE TABLE app_user (
    id             BLOB PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    name           TEXT,
    password_hash  TEXT,
    status         TEXT NOT NULL CHECK (status IN ('INVITED', 'ACTIVE', 'SUSPENDED')),
    -- A generated one-time password: expires, works once, must be changed.
    otp_expires_at        INTEGER,
    otp_used_at           INTEGER,
    must_change_password  INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE user_role (
    user_id  BLOB NOT NULL REFERENCES app_user (id) ON DELETE CASCADE,
    role     TEXT NOT NULL,
    PRIMARY KEY (user_id, role)
);

CREATE TABLE setup_token (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    token_hash  TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE session (
    id_hash       TEXT PRIMARY KEY,
    user_id       BLOB NOT NULL,
    tenant_id     BLOB,
    csrf_token    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    user_agent    TEXT,
    ip            TEXT,
    -- Set on a tenant-host session opened by "Switch to tenant".
    impersonation_id      BLOB,
    -- The user signed in with a one-time password and must change it first.
    must_change_password  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX session_user_idx ON session (user_id);

-- The audit trail: append-only (triggers refuse UPDATE and DELETE), hash-chained.
CREATE TABLE tenant_audit (
    seq          INTEGER PRIMARY KEY,
    id           BLOB NOT NULL UNIQUE,
    ts           INTEGER NOT NULL,
    event_type   TEXT NOT NULL,
    actor_id     BLOB,
    actor_email  TEXT,
    tenant_id    BLOB,
    details      TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);
CREATE INDEX tenant_audit_tenant_idx ON tenant_audit (tenant_id, seq);
CREATE INDEX tenant_audit_type_idx ON tenant_audit (event_type, seq);
CREATE INDEX tenant_audit_ts_idx ON tenant_audit (ts);

CREATE TRIGGER tenant_audit_no_update BEFORE UPDATE ON tenant_audit
BEGIN SELECT RAISE(ABORT, 'tenant_audit is append-only'); END;
CREATE TRIGGER tenant_audit_no_delete BEFORE DELETE ON tenant_audit
BEGIN SELECT RAISE(ABORT, 'tenant_audit is append-only'); END;

-- The head of the chain. Every audited write updates it first, which serialises writers.
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Invitations of platform users (tenant users' are in the tenant's database). One per user;
-- a resend replaces the token, so the old one dies.
CREATE TABLE invitation (
    user_id     BLOB PRIMARY KEY REFERENCES app_user (id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    spent_at    INTEGER,
    revoked_at  INTEGER
);

-- Outgoing email, written with the change that causes it, delivered by the worker.
-- The bodies are blanked once sent, so no link outlives its delivery here.
CREATE TABLE outbox (
    id               BLOB PRIMARY KEY,
    tenant_id        BLOB,
    user_id          BLOB,
    to_addr          TEXT NOT NULL,
    subject          TEXT NOT NULL,
    body_text        TEXT NOT NULL,
    body_html        TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    sent_at          INTEGER
);
CREATE INDEX outbox_due_idx ON outbox (status, next_attempt_at);
CREATE INDEX outbox_user_idx ON outbox (user_id, created_at);

-- "Switch to tenant": who, where, why, until when. The handoff token (hashed, single-use,
-- short-lived) carries the browser from the base host to the tenant's host.
CREATE TABLE impersonation (
    id                  BLOB PRIMARY KEY,
    impersonator_id     BLOB NOT NULL,
    impersonator_email  TEXT NOT NULL,
    tenant_id           BLOB NOT NULL,
    reason              TEXT NOT NULL,
    started_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    ended_at            INTEGER,
    end_reason          TEXT,
    handoff_hash        TEXT UNIQUE,
    handoff_expires_at  INTEGER
);

-- Personal access tokens for the Automation API: stored only as a SHA-256 hash.
CREATE TABLE personal_access_token (
    id                  BLOB PRIMARY KEY,
    token_hash          TEXT NOT NULL UNIQUE,
    name                TEXT NOT NULL,
    scope               TEXT NOT NULL CHECK (scope IN ('read', 'read_write')),
    owner_id            BLOB NOT NULL,
    owner_email         TEXT NOT NULL,
    owner_tenant_id     BLOB,
    restrict_tenant_id  BLOB,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    last_used_at        INTEGER,
    revoked_at          INTEGER
);
CREATE INDEX personal_access_token_owner_idx ON personal_access_token (owner_id);
