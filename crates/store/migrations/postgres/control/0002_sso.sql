-- Single sign-on: identity providers (one per directory: the platform, or a tenant), sign-in
-- attempts in flight, SAML assertion ids already used, and the external identities of platform
-- users (a tenant's are in its own database).
CREATE TABLE identity.identity_provider (
    id                 uuid PRIMARY KEY,
    -- 'platform' or the tenant's id: one provider per directory.
    scope_key          text NOT NULL UNIQUE,
    tenant_id          uuid,
    protocol           text NOT NULL CHECK (protocol IN ('oidc', 'saml')),
    display_name       text NOT NULL,
    mode               text NOT NULL CHECK (mode IN ('password', 'both', 'sso_only')),
    auto_provision     boolean NOT NULL,
    default_roles      jsonb NOT NULL DEFAULT '[]',
    default_tenant_id  uuid,
    -- Protocol settings without secrets (JSON).
    settings           jsonb NOT NULL,
    -- The OIDC client secret, sealed with the server's secret key.
    sealed_secret      text,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);

CREATE TABLE identity.sso_attempt (
    state_hash     text PRIMARY KEY,
    provider_id    uuid NOT NULL,
    tenant_id      uuid,
    -- The hash of the browser-binding cookie set when the attempt started.
    binding_hash   text NOT NULL,
    nonce          text NOT NULL,
    pkce_verifier  text NOT NULL,
    saml_request_id text,
    -- A SAML response already verified at the ACS, waiting for the browser's GET (JSON).
    outcome        jsonb,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL
);

CREATE TABLE identity.saml_assertion_seen (
    provider_id   uuid NOT NULL,
    assertion_id  text NOT NULL,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (provider_id, assertion_id)
);

CREATE TABLE identity.user_identity (
    issuer          text NOT NULL,
    subject         text NOT NULL,
    user_id         uuid NOT NULL REFERENCES identity.app_user (id) ON DELETE CASCADE,
    provider_id     uuid NOT NULL,
    created_at      timestamptz NOT NULL,
    last_sign_in_at timestamptz NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX user_identity_user_idx ON identity.user_identity (user_id);
