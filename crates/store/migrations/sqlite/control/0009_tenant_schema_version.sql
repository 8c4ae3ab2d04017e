-- Upgrades (issue 14): the tenant database's schema version (the highest tenant migration
-- applied), recorded after each successful migration. A node serves a tenant only when this is
-- at least its own binary's tenant version; the others get 503 `tenant_migrating` until it is
-- migrated. Expand only: a column with a default, which older nodes never read.
ALTER TABLE tenant ADD COLUMN schema_version INTEGER NOT NULL DEFAULT 0;
CREATE INDEX tenant_schema_version_idx ON tenant (schema_version) WHERE deleted_at IS NULL;
