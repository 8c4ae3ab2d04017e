-- The data-plane surface (issue 11): service tokens, tenant API keys, provider credentials,
-- and the change feed every node polls to invalidate its verification cache. They live in the
-- control database, not the tenants': the data plane looks keys up by hash across all tenants,
-- and one indexed read here costs no tenant connection (the PostgreSQL budget).

-- Credentials of the product's own backend services (`qd_svc_…`); act for no user.
CREATE TABLE service_token (
    id            BLOB PRIMARY KEY,
    token_hash    TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    scopes        TEXT NOT NULL,          -- JSON array of scope names
    region        TEXT,                   -- only this region's tenants, if set
    created_by    TEXT,                   -- the creator's email (none from the CLI)
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);

-- A tenant's API key: its metadata. Its secrets (one, or two during a roll's grace period)
-- are in api_key_secret.
CREATE TABLE api_key (
    id                   BLOB PRIMARY KEY,
    tenant_id            BLOB NOT NULL REFERENCES tenant (id) ON DELETE CASCADE,
    name                 TEXT NOT NULL,
    scopes               TEXT NOT NULL,   -- JSON array
    prefix               TEXT NOT NULL,
    last_four            TEXT NOT NULL,
    requests_per_minute  INTEGER,
    created_by           TEXT,
    created_at           INTEGER NOT NULL,
    expires_at           INTEGER,
    last_used_at         INTEGER,
    rolled_at            INTEGER,
    revoked_at           INTEGER
);
CREATE INDEX api_key_tenant_idx ON api_key (tenant_id, created_at);

-- SHA-256 of each secret of a key. `not_after` is set on a secret replaced by a roll: it keeps
-- working until then (the grace period).
CREATE TABLE api_key_secret (
    secret_hash  TEXT PRIMARY KEY,
    key_id       BLOB NOT NULL REFERENCES api_key (id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    not_after    INTEGER
);
CREATE INDEX api_key_secret_key_idx ON api_key_secret (key_id);

-- Requests counted per key and minute, summed over every node (the per-key rate limit).
CREATE TABLE api_key_rate (
    key_id        BLOB NOT NULL,
    window_start  INTEGER NOT NULL,       -- unix minute
    hits          INTEGER NOT NULL,
    PRIMARY KEY (key_id, window_start)
);

-- What the verification caches must forget: written in the same (audited, so serialised)
-- transaction as the change, so seq order is commit order.
CREATE TABLE data_plane_change (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    kind     TEXT NOT NULL CHECK (kind IN ('api_key', 'tenant', 'service_token')),
    subject  BLOB NOT NULL,
    at       INTEGER NOT NULL
);

-- A tenant's credential for one upstream provider. Non-secret fields in clear (`fields`,
-- JSON), secret ones sealed together with the server's secret key, bound to tenant and id.
CREATE TABLE provider_credential (
    id          BLOB PRIMARY KEY,
    tenant_id   BLOB NOT NULL REFERENCES tenant (id) ON DELETE CASCADE,
    provider    TEXT NOT NULL,
    fields      TEXT NOT NULL,
    hints       TEXT NOT NULL,            -- JSON: secret field → {last_four, fingerprint}
    sealed      TEXT NOT NULL,
    updated_by  TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (tenant_id, provider)
);

-- Resolutions by the data plane, counted per (service token, credential, minute) and turned
-- into one PROVIDER_CREDENTIAL_READ event per row once the minute has passed.
CREATE TABLE credential_read (
    token_id       BLOB NOT NULL,
    credential_id  BLOB NOT NULL,
    window_start   INTEGER NOT NULL,      -- unix minute
    tenant_id      BLOB NOT NULL,
    provider       TEXT NOT NULL,
    token_name     TEXT NOT NULL,
    reads          INTEGER NOT NULL,
    first_at       INTEGER NOT NULL,
    last_at        INTEGER NOT NULL,
    PRIMARY KEY (token_id, credential_id, window_start)
);
