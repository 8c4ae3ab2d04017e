-- Outbox leases: a worker claims due messages atomically (one conditional UPDATE … RETURNING,
-- under SQLite's write lock) by writing its lease token and an expiry; only the holder marks a
-- message sent or failed, and a lease that expires (a worker that died mid-batch) makes the
-- message claimable again. Two processes on one database never send one message twice.
ALTER TABLE outbox ADD COLUMN lease_token BLOB;
ALTER TABLE outbox ADD COLUMN leased_until INTEGER;
