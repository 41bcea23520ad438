-- The service's audit log (services/runtime/audit.py): append-only security events.
-- Applied by the runtime to every service schema opened with `audit=True`, with {schema}
-- and {role} replaced by the service's schema and role (both checked identifiers).
--
-- Append-only, three ways: the role gets SELECT and INSERT only (db.migrate revokes the
-- rest after its blanket grants, on every start); row-level security has no UPDATE or
-- DELETE policy; and a trigger refuses UPDATE, DELETE and TRUNCATE for everyone (the owner
-- and superusers included) except inside purge_audit_events, the retention purge.

CREATE TABLE audit_events (
    id              uuid PRIMARY KEY,
    event_time      timestamptz NOT NULL,
    service         text NOT NULL,
    kind            text NOT NULL,
    actor_user_id   text NOT NULL DEFAULT '',
    subject_user_id text NOT NULL DEFAULT '',
    request_id      text NOT NULL DEFAULT '',
    trace_id        text NOT NULL DEFAULT '',
    source          text NOT NULL DEFAULT '',
    resource_id     text NOT NULL DEFAULT '',
    outcome         text NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    details         jsonb NOT NULL DEFAULT '{}'
);
-- Listings are newest first, optionally about one user (the subject) or by one (the actor).
CREATE INDEX audit_events_by_time ON audit_events (event_time DESC, id DESC);
CREATE INDEX audit_events_by_subject ON audit_events (subject_user_id, event_time DESC, id DESC)
    WHERE subject_user_id <> '';
CREATE INDEX audit_events_by_actor ON audit_events (actor_user_id, event_time DESC, id DESC)
    WHERE actor_user_id <> '';

-- Any request may append; only a reader that says so (the admin listing, after checking the
-- caller's admin scope) sees rows, so a user-scoped query that wanders here sees nothing.
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_events_insert ON audit_events FOR INSERT WITH CHECK (true);
CREATE POLICY audit_events_select ON audit_events FOR SELECT
    USING (current_setting('app.audit_reader', true) = 'on');

CREATE FUNCTION refuse_audit_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('parley.audit_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit_change();

-- The retention purge: runs with its owner's rights (the migration admin, superuser or
-- BYPASSRLS), deletes at most max_rows events older than `before`, oldest first, and
-- nothing else. The flag that lets the trigger pass lasts only for this call.
CREATE FUNCTION purge_audit_events(before timestamptz, max_rows integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = {schema}, pg_temp
    AS $$
DECLARE
    purged integer;
BEGIN
    PERFORM set_config('parley.audit_purge', 'on', true);
    WITH doomed AS (
        SELECT id FROM audit_events WHERE event_time < before
        ORDER BY event_time LIMIT max_rows FOR UPDATE SKIP LOCKED
    )
    DELETE FROM audit_events a USING doomed WHERE a.id = doomed.id;
    GET DIAGNOSTICS purged = ROW_COUNT;
    PERFORM set_config('parley.audit_purge', 'off', true);
    RETURN purged;
END
$$;
REVOKE ALL ON FUNCTION purge_audit_events(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION purge_audit_events(timestamptz, integer) TO {role};
