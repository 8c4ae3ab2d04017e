-- Crash recovery and backups (issue 14). An intent is no longer deleted when its control side
-- commits: it is marked settled (`settled_at`, the change's time) and kept an hour, so a
-- backup that copies the control database first and the tenants' after still holds, for a
-- change made in between, the intent whose event the restored control database lacks. A
-- server's start-up pass reopens every settled intent whose event is not in the trail
-- (`settled_at` back to NULL, `reopened` set), and the pass then repairs it like any open one.
ALTER TABLE pending_event ADD COLUMN settled_at INTEGER;
ALTER TABLE pending_event ADD COLUMN reopened INTEGER NOT NULL DEFAULT 0;
CREATE INDEX pending_event_open_idx ON pending_event (settled_at, created_at);
