-- Events to the product (issue 13): webhook endpoints, the events every published change
-- writes in its own transaction (the outbox, and the feed), and one delivery per event and
-- subscribed endpoint.

CREATE TABLE webhook_endpoint (
    id                      BLOB PRIMARY KEY,
    url                     TEXT NOT NULL,
    description             TEXT NOT NULL,
    event_types             TEXT NOT NULL,      -- space-separated patterns: tenant.created, tenant.*, *
    region                  TEXT,               -- only this region's tenants' events
    enabled                 INTEGER NOT NULL,
    disabled_reason         TEXT,               -- manual | failing
    secret_sealed           TEXT NOT NULL,      -- XChaCha20-Poly1305 with the secret key, bound to the id
    previous_secret_sealed  TEXT,               -- a rolled secret, valid until previous_secret_until
    previous_secret_until   INTEGER,
    failing_since           INTEGER,            -- no success since
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL
);

-- seq is the feed's cursor: every writer is an audited transaction, serialised on the chain
-- head, so seq order is commit order.
CREATE TABLE webhook_event (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           BLOB NOT NULL UNIQUE,          -- the audit event's id
    event_type   TEXT NOT NULL,
    tenant_id    BLOB,
    region       TEXT,                           -- the tenant's region when it happened
    previous_region TEXT,                        -- its region before, when the change moved it
    occurred_at  INTEGER NOT NULL,
    body         TEXT NOT NULL                  -- the JSON every delivery sends, byte for byte
);
CREATE INDEX webhook_event_type_idx ON webhook_event (event_type, seq);
CREATE INDEX webhook_event_time_idx ON webhook_event (occurred_at);

-- order_key: the tenant's id (or '' for platform-wide events): per endpoint, a tenant's
-- events go one at a time, in seq order.
CREATE TABLE webhook_delivery (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                BLOB NOT NULL UNIQUE,
    endpoint_id       BLOB NOT NULL REFERENCES webhook_endpoint (id) ON DELETE CASCADE,
    event_seq         INTEGER NOT NULL REFERENCES webhook_event (seq) ON DELETE CASCADE,
    order_key         TEXT NOT NULL,
    status            TEXT NOT NULL,            -- pending | delivered | failed | cancelled (no longer subscribed)
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER NOT NULL,
    first_attempt_at  INTEGER,
    last_attempt_at   INTEGER,
    last_status       INTEGER,
    last_response_ms  INTEGER,
    last_error        TEXT,
    lease_token       BLOB,
    leased_until      INTEGER,
    created_at        INTEGER NOT NULL
);
CREATE INDEX webhook_delivery_due_idx ON webhook_delivery (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_delivery_order_idx ON webhook_delivery (endpoint_id, order_key, seq) WHERE status = 'pending';
CREATE INDEX webhook_delivery_endpoint_idx ON webhook_delivery (endpoint_id, seq);
CREATE INDEX webhook_delivery_event_idx ON webhook_delivery (event_seq);
