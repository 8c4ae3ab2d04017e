-- A tenant's own database (SQLite). Users and roles arrive with the invitation issue;
-- this records which tenant the file belongs to, so a misplaced file is detected.
CREATE TABLE tenant_info (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    tenant_id   BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
