-- Nothing to change in a tenant's database: the audit trail, its head and its key live in the
-- control database (see control/0003_audit_keyed.sql). This keeps the numbering of the two
-- migration folders aligned.
SELECT 1;
