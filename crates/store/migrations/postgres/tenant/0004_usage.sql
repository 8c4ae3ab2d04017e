-- Usage (issue 12). Raw events for `usage_raw_retention_days` (then dropped), each once: the
-- primary key (source, id) is the deduplication, and only rows that insert are rolled up.
CREATE TABLE security.usage_event (
    source       text NOT NULL,
    event_id     text NOT NULL,
    meter        text NOT NULL,
    event_time   timestamptz NOT NULL,
    api_key_id   text NOT NULL,           -- '' when the subject was the tenant
    value        bigint NOT NULL,
    dims         text NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (source, event_id)
);
-- Raw events are dropped by when they were received: a duplicate's original stays for the
-- whole window after it arrived, whatever time the event claims.
CREATE INDEX usage_event_received_idx ON security.usage_event (received_at);

-- Per hour × meter × dimension values × API key: the meter's fold (sum, count or max) and the
-- number of events. Kept.
CREATE TABLE security.usage_rollup (
    hour        timestamptz NOT NULL,
    meter       text NOT NULL,
    dims        text NOT NULL,
    api_key_id  text NOT NULL,
    value       bigint NOT NULL,
    events      bigint NOT NULL,
    PRIMARY KEY (hour, meter, dims, api_key_id)
);
-- A meter and dimension values over a month (the summary's recomputation of what changed).
CREATE INDEX usage_rollup_series_idx ON security.usage_rollup (meter, dims, hour);
