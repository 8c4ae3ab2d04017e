-- The audit chain is keyed from here on: every event written after this migration carries an
-- HMAC-SHA256 link made with a key derived from the server's secret key (not in the database);
-- the events already written keep their plain SHA-256 links and still verify. The head records
-- from which seq the chain is keyed and a MAC over (seq, hash, keyed_from), and only moves
-- forward: a deleted tail no longer matches it, and it cannot be moved back to hide one.
ALTER TABLE identity.audit_head ADD COLUMN keyed_from bigint NOT NULL DEFAULT 1;
ALTER TABLE identity.audit_head ADD COLUMN mac text;
UPDATE identity.audit_head SET keyed_from = seq + 1;

CREATE FUNCTION identity.audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'audit_head cannot be deleted';
    END IF;
    IF NEW.seq < OLD.seq OR NEW.keyed_from <> OLD.keyed_from OR NEW.id <> OLD.id THEN
        RAISE EXCEPTION 'audit_head only moves forward';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_head_forward_only
    BEFORE UPDATE OR DELETE ON identity.audit_head
    FOR EACH ROW EXECUTE FUNCTION identity.audit_head_forward_only();
CREATE TRIGGER audit_head_no_truncate
    BEFORE TRUNCATE ON identity.audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION identity.audit_head_forward_only();
