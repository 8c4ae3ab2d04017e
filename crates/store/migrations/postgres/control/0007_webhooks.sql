-- Events to the product (issue 13): webhook endpoints, the events every published change
-- writes in its own transaction (the outbox, and the feed), and one delivery per event and
-- subscribed endpoint.

CREATE TABLE identity.webhook_endpoint (
    id                      uuid PRIMARY KEY,
    url                     text NOT NULL,
    description             text NOT NULL,
    event_types             text NOT NULL,      -- space-separated patterns: tenant.created, tenant.*, *
    region                  text,               -- only this region's tenants' events
    enabled                 boolean NOT NULL,
    disabled_reason         text,               -- manual | failing
    secret_sealed           text NOT NULL,      -- XChaCha20-Poly1305 with the secret key, bound to the id
    previous_secret_sealed  text,               -- a rolled secret, valid until previous_secret_until
    previous_secret_until   timestamptz,
    failing_since           timestamptz,            -- no success since
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL
);

-- seq is the feed's cursor: every writer is an audited transaction, serialised on the chain
-- head, so seq order is commit order.
CREATE TABLE identity.webhook_event (
    seq          bigserial PRIMARY KEY,
    id           uuid NOT NULL UNIQUE,          -- the audit event's id
    event_type   text NOT NULL,
    tenant_id    uuid,
    region       text,                           -- the tenant's region when it happened
    previous_region text,                        -- its region before, when the change moved it
    occurred_at  timestamptz NOT NULL,
    body         text NOT NULL                  -- the JSON every delivery sends, byte for byte
);
CREATE INDEX webhook_event_type_idx ON identity.webhook_event (event_type, seq);
CREATE INDEX webhook_event_time_idx ON identity.webhook_event (occurred_at);

-- order_key: the tenant's id (or '' for platform-wide events): per endpoint, a tenant's
-- events go one at a time, in seq order.
CREATE TABLE identity.webhook_delivery (
    seq               bigserial PRIMARY KEY,
    id                uuid NOT NULL UNIQUE,
    endpoint_id       uuid NOT NULL REFERENCES identity.webhook_endpoint (id) ON DELETE CASCADE,
    event_seq         bigint NOT NULL REFERENCES identity.webhook_event (seq) ON DELETE CASCADE,
    order_key         text NOT NULL,
    status            text NOT NULL,            -- pending | delivered | failed | cancelled (no longer subscribed)
    attempts          bigint NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL,
    first_attempt_at  timestamptz,
    last_attempt_at   timestamptz,
    last_status       bigint,
    last_response_ms  bigint,
    last_error        text,
    lease_token       uuid,
    leased_until      timestamptz,
    created_at        timestamptz NOT NULL
);
CREATE INDEX webhook_delivery_due_idx ON identity.webhook_delivery (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_delivery_order_idx ON identity.webhook_delivery (endpoint_id, order_key, seq) WHERE status = 'pending';
CREATE INDEX webhook_delivery_endpoint_idx ON identity.webhook_delivery (endpoint_id, seq);
CREATE INDEX webhook_delivery_event_idx ON identity.webhook_delivery (event_seq);
