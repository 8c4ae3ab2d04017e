-- A tenant's own database (PostgreSQL), schema `security`. Users and roles
-- (security.app_user, security.user_role) arrive with the invitation issue.
CREATE TABLE security.tenant_info (
    id          integer PRIMARY KEY CHECK (id = 1),
    tenant_id   uuid NOT NULL,
    created_at  timestamptz NOT NULL
);
