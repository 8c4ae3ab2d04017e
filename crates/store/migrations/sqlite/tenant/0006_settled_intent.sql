-- Crash recovery and backups (issue 14). An intent is no longer deleted when its control side
-- commits: it is marked settled (`settled_at`, the change's time) and kept an hour, so a
-- backup that copies the control database first and the tenants' after still holds, for a
-- change made in between, the intent that lets the restored server's first reconcile pass
-- write its event. The pass repairs open intents (`settled_at IS NULL`); at start-up it also
-- checks the settled ones against the trail. Expand-only: an older node deletes intents, and
-- treats a settled one as an intent whose event is already written (removes it).
ALTER TABLE pending_event ADD COLUMN settled_at INTEGER;
CREATE INDEX pending_event_open_idx ON pending_event (settled_at, created_at);
