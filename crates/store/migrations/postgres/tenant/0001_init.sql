-- A tenant's own database (PostgreSQL), schema `security`. Users and roles
-- (security.app_user, security.user_role) arrive with the invitation issue.
CREATE TABLE security.tenant_info (
    id          integer PRIMARY KEY CHECK (id = 1),
    tenant_id   uuid NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE security.app_user (
    id             uuid PRIMARY KEY,
    email          text NOT NULL UNIQUE,
    name           text,
    password_hash  text,
    status         text NOT NULL CHECK (status IN ('INVITED', 'ACTIVE', 'SUSPENDED')),
    otp_expires_at        timestamptz,
    otp_used_at           timestamptz,
    must_change_password  boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);

CREATE TABLE security.user_role (
    user_id  uuid NOT NULL REFERENCES security.app_user (id) ON DELETE CASCADE,
    role     text NOT NULL,
    PRIMARY KEY (user_id, role)
);

CREATE TABLE security.invitation (
    user_id     uuid PRIMARY KEY REFERENCES security.app_user (id) ON DELETE CASCADE,
    token_hash  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    spent_at    timestamptz,
    revoked_at  timestamptz
);
