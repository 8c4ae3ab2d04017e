-- What the reconcile pass (issue 14) found and could not simply repair, one row per finding:
--   intent            a tenant-side change whose control side could not be written (subject:
--                     the event id; payload: what it should have written)
--   orphan_database   a tenant database without a tenant row (subject: the tenant id), first
--                     seen at first_seen; dropped after a margin if it holds no user, else kept
--                     and quarantined
--   missing_database  a live tenant row whose database is missing (subject: the tenant id)
-- quarantined_at is set (with its audit event, once) when the finding is quarantined.
CREATE TABLE identity.reconcile_finding (
    kind            text NOT NULL,
    subject         text NOT NULL,
    tenant_id       uuid,
    reason          text NOT NULL,
    payload         text,
    first_seen      timestamptz NOT NULL,
    quarantined_at  timestamptz,
    PRIMARY KEY (kind, subject)
);
