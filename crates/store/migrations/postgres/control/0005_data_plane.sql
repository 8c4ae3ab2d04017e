-- The data-plane surface (issue 11): service tokens, tenant API keys, provider credentials,
-- and the change feed every node polls to invalidate its verification cache. They live in the
-- control database, not the tenants': the data plane looks keys up by hash across all tenants,
-- and one indexed read here costs no tenant connection (the PostgreSQL budget).

-- Credentials of the product's own backend services (`qd_svc_…`); act for no user.
CREATE TABLE identity.service_token (
    id            uuid PRIMARY KEY,
    token_hash    text NOT NULL UNIQUE,
    name          text NOT NULL,
    scopes        jsonb NOT NULL,          -- JSON array of scope names
    region        text,                   -- only this region's tenants, if set
    created_by    text,                   -- the creator's email (none from the CLI)
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- A tenant's API key: its metadata. Its secrets (one, or two during a roll's grace period)
-- are in api_key_secret.
CREATE TABLE identity.api_key (
    id                   uuid PRIMARY KEY,
    tenant_id            uuid NOT NULL REFERENCES identity.tenant (id) ON DELETE CASCADE,
    name                 text NOT NULL,
    scopes               jsonb NOT NULL,   -- JSON array
    prefix               text NOT NULL,
    last_four            text NOT NULL,
    requests_per_minute  integer,
    created_by           text,
    created_at           timestamptz NOT NULL,
    expires_at           timestamptz,
    last_used_at         timestamptz,
    rolled_at            timestamptz,
    revoked_at           timestamptz
);
CREATE INDEX api_key_tenant_idx ON identity.api_key (tenant_id, created_at);

-- SHA-256 of each secret of a key. `not_after` is set on a secret replaced by a roll: it keeps
-- working until then (the grace period).
CREATE TABLE identity.api_key_secret (
    secret_hash  text PRIMARY KEY,
    key_id       uuid NOT NULL REFERENCES identity.api_key (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL,
    not_after    timestamptz
);
CREATE INDEX api_key_secret_key_idx ON identity.api_key_secret (key_id);

-- Requests counted per key and minute, summed over every node (the per-key rate limit).
CREATE TABLE identity.api_key_rate (
    key_id        uuid NOT NULL,
    window_start  bigint NOT NULL,       -- unix minute
    hits          bigint NOT NULL,
    PRIMARY KEY (key_id, window_start)
);

-- What the verification caches must forget: written in the same (audited, so serialised)
-- transaction as the change, so seq order is commit order.
CREATE TABLE identity.data_plane_change (
    seq      bigserial PRIMARY KEY,
    kind     text NOT NULL CHECK (kind IN ('api_key', 'tenant', 'service_token')),
    subject  uuid NOT NULL,
    at       timestamptz NOT NULL
);

-- A tenant's credential for one upstream provider. Non-secret fields in clear (`fields`,
-- JSON), secret ones sealed together with the server's secret key, bound to tenant and id.
CREATE TABLE identity.provider_credential (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES identity.tenant (id) ON DELETE CASCADE,
    provider    text NOT NULL,
    fields      jsonb NOT NULL,
    hints       jsonb NOT NULL,            -- JSON: secret field → {last_four, fingerprint}
    sealed      text NOT NULL,
    updated_by  text,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    UNIQUE (tenant_id, provider)
);

-- Resolutions by the data plane, counted per (service token, credential, minute) and turned
-- into one PROVIDER_CREDENTIAL_READ event per row once the minute has passed.
CREATE TABLE identity.credential_read (
    token_id       uuid NOT NULL,
    credential_id  uuid NOT NULL,
    window_start   bigint NOT NULL,      -- unix minute
    tenant_id      uuid NOT NULL,
    provider       text NOT NULL,
    token_name     text NOT NULL,
    reads          bigint NOT NULL,
    first_at       timestamptz NOT NULL,
    last_at        timestamptz NOT NULL,
    PRIMARY KEY (token_id, credential_id, window_start)
);
