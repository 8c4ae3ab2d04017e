-- Usage and cost (issue 12): the cross-tenant monthly summary the Billing view reads, budgets,
-- their once-a-month crossings, and the hard limit's block. The ingestion journal itself is
-- not here: on SQLite each region's journal is its own file (usage/<region>.db).

-- Per month, tenant, meter and dimension values: the tenant's total (sum, count or max as the
-- meter folds), replaced by the sweep from the tenant's own rollups (never added to, so a
-- sweep repeated after a crash cannot count twice).
CREATE TABLE usage_month (
    month      TEXT NOT NULL,             -- YYYY-MM (UTC)
    tenant_id  BLOB NOT NULL,
    meter      TEXT NOT NULL,
    dims       TEXT NOT NULL,             -- canonical JSON of the dimension values
    value      INTEGER NOT NULL,
    events     INTEGER NOT NULL,
    PRIMARY KEY (month, tenant_id, meter, dims)
);
CREATE INDEX usage_month_tenant_idx ON usage_month (tenant_id, month);

CREATE TABLE tenant_budget (
    tenant_id          BLOB PRIMARY KEY REFERENCES tenant (id) ON DELETE CASCADE,
    amount             INTEGER NOT NULL,  -- minor units per calendar month
    threshold_percent  INTEGER NOT NULL,
    hard_limit         INTEGER NOT NULL,
    updated_by         BLOB,
    updated_at         INTEGER NOT NULL
);

-- A threshold reached or a budget exceeded: recorded once per tenant and month (the insert
-- that wins sends the email and writes the event; several nodes may try).
CREATE TABLE budget_crossing (
    tenant_id  BLOB NOT NULL REFERENCES tenant (id) ON DELETE CASCADE,
    month      TEXT NOT NULL,
    kind       TEXT NOT NULL,             -- threshold | exceeded
    at         INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, month, kind)
);

-- A hard limit reached: the tenant's keys answer budget_exceeded until `until` (the next
-- month), or until the budget is changed.
CREATE TABLE budget_block (
    tenant_id  BLOB PRIMARY KEY REFERENCES tenant (id) ON DELETE CASCADE,
    until      INTEGER NOT NULL
);
