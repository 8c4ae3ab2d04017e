-- The control database (PostgreSQL), schema `identity`. The runbooks query
-- identity.tenant (status) and identity.tenant_audit (tenant_id, event_type, ts, details).

CREATE TABLE identity.tenant (
    id          uuid PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    region      text NOT NULL,
    tier        text NOT NULL,
    status      text NOT NULL CHECK (status IN ('active', 'read_only', 'suspended')),
    metadata    jsonb NOT NULL DEFAULT '{}',
    db_name     text NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    deleted_at  timestamptz
);

CREATE TABLE identity.app_user (
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

CREATE TABLE identity.user_role (
    user_id  uuid NOT NULL REFERENCES identity.app_user (id) ON DELETE CASCADE,
    role     text NOT NULL,
    PRIMARY KEY (user_id, role)
);

CREATE TABLE identity.setup_token (
    id          integer PRIMARY KEY CHECK (id = 1),
    token_hash  text NOT NULL,
    expires_at  timestamptz NOT NULL
);

CREATE TABLE identity.session (
    id_hash       text PRIMARY KEY,
    user_id       uuid NOT NULL,
    tenant_id     uuid,
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    user_agent    text,
    ip            text,
    impersonation_id      uuid,
    must_change_password  boolean NOT NULL DEFAULT false
);
CREATE INDEX session_user_idx ON identity.session (user_id);

CREATE TABLE identity.tenant_audit (
    seq          bigint PRIMARY KEY,
    id           uuid NOT NULL UNIQUE,
    ts           timestamptz NOT NULL,
    event_type   text NOT NULL,
    actor_id     uuid,
    actor_email  text,
    tenant_id    uuid,
    details      jsonb NOT NULL,
    prev_hash    text NOT NULL,
    hash         text NOT NULL
);
CREATE INDEX tenant_audit_tenant_idx ON identity.tenant_audit (tenant_id, seq);
CREATE INDEX tenant_audit_type_idx ON identity.tenant_audit (event_type, seq);
CREATE INDEX tenant_audit_ts_idx ON identity.tenant_audit (ts);

CREATE FUNCTION identity.refuse_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tenant_audit is append-only';
END;
$$;
CREATE TRIGGER tenant_audit_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON identity.tenant_audit
    FOR EACH STATEMENT EXECUTE FUNCTION identity.refuse_audit_change();

CREATE TABLE identity.audit_head (
    id    integer PRIMARY KEY CHECK (id = 1),
    seq   bigint NOT NULL,
    hash  text NOT NULL
);
INSERT INTO identity.audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE identity.invitation (
    user_id     uuid PRIMARY KEY REFERENCES identity.app_user (id) ON DELETE CASCADE,
    token_hash  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    spent_at    timestamptz,
    revoked_at  timestamptz
);

CREATE TABLE identity.outbox (
    id               uuid PRIMARY KEY,
    tenant_id        uuid,
    user_id          uuid,
    to_addr          text NOT NULL,
    subject          text NOT NULL,
    body_text        text NOT NULL,
    body_html        text NOT NULL,
    status           text NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text,
    created_at       timestamptz NOT NULL,
    sent_at          timestamptz
);
CREATE INDEX outbox_due_idx ON identity.outbox (status, next_attempt_at);
CREATE INDEX outbox_user_idx ON identity.outbox (user_id, created_at);

CREATE TABLE identity.impersonation (
    id                  uuid PRIMARY KEY,
    impersonator_id     uuid NOT NULL,
    impersonator_email  text NOT NULL,
    tenant_id           uuid NOT NULL,
    reason              text NOT NULL,
    started_at          timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    ended_at            timestamptz,
    end_reason          text,
    handoff_hash        text UNIQUE,
    handoff_expires_at  timestamptz
);

CREATE TABLE identity.personal_access_token (
    id                  uuid PRIMARY KEY,
    token_hash          text NOT NULL UNIQUE,
    name                text NOT NULL,
    scope               text NOT NULL CHECK (scope IN ('read', 'read_write')),
    owner_id            uuid NOT NULL,
    owner_email         text NOT NULL,
    owner_tenant_id     uuid,
    restrict_tenant_id  uuid,
    created_at          timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    last_used_at        timestamptz,
    revoked_at          timestamptz
);
CREATE INDEX personal_access_token_owner_idx ON identity.personal_access_token (owner_id);
