-- Counters every node adds to (issue 14, no node-local state that matters), beside the
-- Automation API's `api_rate`: usage events per service token (its id) per 2-second window,
-- counted in memory on each node and added every ~200 ms; single sign-on starts per client
-- network (the SHA-256 hex of it: no address in the clear) per minute, one statement a start.
-- `window_start` is in the counter's own unit; housekeeping deletes rows past `expires_at`.
-- The per-network misses on secret-bearing links are kept in `sign_in_throttle` under their
-- own hashed keys (the same back-off rows). Expand-only: no existing table changes.
CREATE TABLE limit_count (
    counter       TEXT NOT NULL,
    key           TEXT NOT NULL,
    window_start  INTEGER NOT NULL,
    hits          INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,        -- unix µs
    PRIMARY KEY (counter, key, window_start)
);
CREATE INDEX limit_count_expires_idx ON limit_count (expires_at);
