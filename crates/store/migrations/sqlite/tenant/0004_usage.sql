-- Usage (issue 12). Raw events for `usage_raw_retention_days` (then dropped), each once: the
-- primary key (source, id) is the deduplication, and only rows that insert are rolled up.
CREATE TABLE usage_event (
    source       TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    meter        TEXT NOT NULL,
    event_time   INTEGER NOT NULL,
    api_key_id   TEXT NOT NULL,           -- '' when the subject was the tenant
    value        INTEGER NOT NULL,
    dims         TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    PRIMARY KEY (source, event_id)
) WITHOUT ROWID;
-- Raw events are dropped by when they were received: a duplicate's original stays for the
-- whole window after it arrived, whatever time the event claims.
CREATE INDEX usage_event_received_idx ON usage_event (received_at);

-- Per hour × meter × dimension values × API key: the meter's fold (sum, count or max) and the
-- number of events. Kept.
CREATE TABLE usage_rollup (
    hour        INTEGER NOT NULL,
    meter       TEXT NOT NULL,
    dims        TEXT NOT NULL,
    api_key_id  TEXT NOT NULL,
    value       INTEGER NOT NULL,
    events      INTEGER NOT NULL,
    PRIMARY KEY (hour, meter, dims, api_key_id)
) WITHOUT ROWID;
-- A meter and dimension values over a month (the summary's recomputation of what changed).
CREATE INDEX usage_rollup_series_idx ON usage_rollup (meter, dims, hour);
