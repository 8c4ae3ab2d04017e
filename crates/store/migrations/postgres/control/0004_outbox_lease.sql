-- Outbox leases: a worker claims due messages atomically (FOR UPDATE SKIP LOCKED) by writing
-- its lease token and an expiry; only the holder marks a message sent or failed, and a lease
-- that expires (a worker that died mid-batch) makes the message claimable again. Two processes
-- on one database never send one message twice.
ALTER TABLE identity.outbox ADD COLUMN lease_token uuid;
ALTER TABLE identity.outbox ADD COLUMN leased_until timestamptz;
