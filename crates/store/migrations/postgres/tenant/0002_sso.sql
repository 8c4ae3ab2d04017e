-- The external identities (issuer, subject) of the tenant's users, linked or provisioned by
-- single sign-on. An account is found by these, never by email alone.
CREATE TABLE security.user_identity (
    issuer          text NOT NULL,
    subject         text NOT NULL,
    user_id         uuid NOT NULL REFERENCES security.app_user (id) ON DELETE CASCADE,
    provider_id     uuid NOT NULL,
    created_at      timestamptz NOT NULL,
    last_sign_in_at timestamptz NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX user_identity_user_idx ON security.user_identity (user_id);
