-- The external identities (issuer, subject) of the tenant's users, linked or provisioned by
-- single sign-on. An account is found by these, never by email alone.
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
