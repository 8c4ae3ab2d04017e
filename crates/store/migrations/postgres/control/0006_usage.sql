-- Usage and cost (issue 12): the ingestion journal, the cross-tenant monthly summary the
-- Billing view reads, budgets, their once-a-month crossings, and the hard limit's block.
--
-- The journal: accepted usage events wait here until a sweep moves them into their tenant's
-- database. On PostgreSQL every region's tenant databases live on this one cluster today, so
-- each region's journal is its rows here (region column); on SQLite it is a file per region.
CREATE TABLE identity.usage_journal (
    seq          bigserial PRIMARY KEY,
    region       text NOT NULL,
    tenant_id    uuid NOT NULL,
    api_key_id   uuid,
    source       text NOT NULL,
    event_id     text NOT NULL,
    meter        text NOT NULL,
    event_time   timestamptz NOT NULL,
    value        bigint NOT NULL,
    dims         text NOT NULL,
    received_at  timestamptz NOT NULL
);
CREATE INDEX usage_journal_region_idx ON identity.usage_journal (region, seq);

-- Per region: who sweeps it now (a lease), and up to when everything received is applied.
CREATE TABLE identity.usage_journal_state (
    region         text PRIMARY KEY,
    holder         uuid,
    lease_until    timestamptz,
    swept_through  timestamptz
);

-- Per month, tenant, meter and dimension values: the tenant's total (sum, count or max as the
-- meter folds), replaced by the sweep from the tenant's own rollups (never added to, so a
-- sweep repeated after a crash cannot count twice).
CREATE TABLE identity.usage_month (
    month      text NOT NULL,
    tenant_id  uuid NOT NULL,
    meter      text NOT NULL,
    dims       text NOT NULL,
    value      bigint NOT NULL,
    events     bigint NOT NULL,
    PRIMARY KEY (month, tenant_id, meter, dims)
);
CREATE INDEX usage_month_tenant_idx ON identity.usage_month (tenant_id, month);

CREATE TABLE identity.tenant_budget (
    tenant_id          uuid PRIMARY KEY REFERENCES identity.tenant (id) ON DELETE CASCADE,
    amount             bigint NOT NULL,
    threshold_percent  integer NOT NULL,
    hard_limit         boolean NOT NULL,
    updated_by         uuid,
    updated_at         timestamptz NOT NULL
);

CREATE TABLE identity.budget_crossing (
    tenant_id  uuid NOT NULL REFERENCES identity.tenant (id) ON DELETE CASCADE,
    month      text NOT NULL,
    kind       text NOT NULL,
    at         timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, month, kind)
);

CREATE TABLE identity.budget_block (
    tenant_id  uuid PRIMARY KEY REFERENCES identity.tenant (id) ON DELETE CASCADE,
    until      timestamptz NOT NULL
);
