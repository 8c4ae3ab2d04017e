-- A tenant's own database (SQLite). Users and roles arrive with the invitation issue;
-- this records which tenant the file belongs to, so a misplaced file is detected.
CREATE TABLE tenant_info (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    tenant_id   BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

-- The tenant's users, their roles and their invitations.
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

CREATE TABLE invitation (
    user_id     BLOB PRIMARY KEY REFERENCES app_user (id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    spent_at    INTEGER,
    revoked_at  INTEGER
);
