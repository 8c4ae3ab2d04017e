-- The audit chain is keyed from here on: every event written after this migration carries an
-- HMAC-SHA256 link made with a key derived from the server's secret key (not in the database);
-- the events already written keep their plain SHA-256 links and still verify. The head records
-- from which seq the chain is keyed and a MAC over (seq, hash, keyed_from), and only moves
-- forward: a deleted tail no longer matches it, and it cannot be moved back to hide one.
ALTER TABLE audit_head ADD COLUMN keyed_from INTEGER NOT NULL DEFAULT 1;
ALTER TABLE audit_head ADD COLUMN mac TEXT;
UPDATE audit_head SET keyed_from = seq + 1;

CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head
WHEN NEW.seq < OLD.seq OR NEW.keyed_from <> OLD.keyed_from OR NEW.id <> OLD.id
BEGIN SELECT RAISE(ABORT, 'audit_head only moves forward'); END;
CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
BEGIN SELECT RAISE(ABORT, 'audit_head cannot be deleted'); END;
