-- A region's usage ingestion journal on the region's own cluster (schema `journal` of the
-- database its URL names): accepted events wait here until a sweep moves them into their
-- tenant's database (on the same cluster), in bulk. The same shape as the control database's
-- `usage_journal`, which keeps the journals of regions on the control cluster.
CREATE TABLE usage_journal (
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
CREATE INDEX usage_journal_region_idx ON usage_journal (region, seq);

-- Who sweeps the region's journal now (a lease), and up to when everything received is applied.
CREATE TABLE usage_journal_state (
    region         text PRIMARY KEY,
    holder         uuid,
    lease_until    timestamptz,
    swept_through  timestamptz
);
