-- Single sign-on: identity providers (one per directory: the platform, or a tenant), sign-in
-- attempts in flight, SAML assertion ids already used, and the external identities of platform
-- users (a tenant's are in its own database).
CREATE TABLE identity_provider (
    id                 BLOB PRIMARY KEY,
    -- 'platform' or the tenant's id: one provider per directory.
    scope_key          TEXT NOT NULL UNIQUE,
    tenant_id          BLOB,
    protocol           TEXT NOT NULL CHECK (protocol IN ('oidc', 'saml')),
    display_name       TEXT NOT NULL,
    mode               TEXT NOT NULL CHECK (mode IN ('password', 'both', 'sso_only')),
    auto_provision     INTEGER NOT NULL,
    default_roles      TEXT NOT NULL DEFAULT '[]',
    default_tenant_id  BLOB,
    -- Protocol settings without secrets (JSON).
    settings           TEXT NOT NULL,
    -- The OIDC client secret, sealed with the server's secret key.
    sealed_secret      TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);

CREATE TABLE sso_attempt (
    state_hash     TEXT PRIMARY KEY,
    provider_id    BLOB NOT NULL,
    tenant_id      BLOB,
    -- The hash of the browser-binding cookie set when the attempt started.
    binding_hash   TEXT NOT NULL,
    nonce          TEXT NOT NULL,
    pkce_verifier  TEXT NOT NULL,
    saml_request_id TEXT,
    -- A SAML response already verified at the ACS, waiting for the browser's GET (JSON).
    outcome        TEXT,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
);

CREATE TABLE saml_assertion_seen (
    provider_id   BLOB NOT NULL,
    assertion_id  TEXT NOT NULL,
    expires_at    INTEGER NOT NULL,
    PRIMARY KEY (provider_id, assertion_id)
);

CREATE TABLE user_identity (
    issuer          TEXT NOT NULL,
    subject         TEXT NOT NULL,
    user_id         BLOB NOT NULL REFERENCES app_user (id) ON DELETE CASCADE,
    provider_id     BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    last_sign_in_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX user_identity_user_idx ON user_identity (user_id);
