-- Sessions (threads), their messages, and feedback on messages. Runs as the admin with
-- search_path = sessions; the service role parley_sessions gets DML on these tables only.

-- The caller's user id for row-level security, set per transaction by the service from the
-- gateway-verified identity. NULL (no row matches) when unset.
CREATE FUNCTION current_app_user() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.user_id', true), '') $$;

CREATE TABLE sessions (
    id            uuid PRIMARY KEY,
    user_id       text NOT NULL DEFAULT current_app_user(),
    title         text NOT NULL DEFAULT '',
    status        smallint NOT NULL CHECK (status IN (1, 2, 3)),
    metadata      jsonb NOT NULL DEFAULT '{}',
    assistant_id  text NOT NULL DEFAULT '',
    message_count bigint NOT NULL DEFAULT 0,
    create_time   timestamptz NOT NULL DEFAULT now(),
    -- Any change to the session or its messages bumps this: the idle clock for retention.
    update_time   timestamptz NOT NULL DEFAULT now(),
    -- Target of messages' composite foreign key: a message's owner is its session's owner.
    UNIQUE (id, user_id)
);
-- Listing a user's sessions newest first, with or without a status filter, reads one page.
CREATE INDEX sessions_by_user ON sessions (user_id, create_time DESC, id DESC);
CREATE INDEX sessions_by_user_status ON sessions (user_id, status, create_time DESC, id DESC);
CREATE INDEX sessions_by_idleness ON sessions (update_time);

CREATE TABLE messages (
    -- Keyset position: appends to one session are serialised by the session row lock taken
    -- in the same statement, so seq grows in commit order within a session.
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    id           uuid PRIMARY KEY,
    session_id   uuid NOT NULL,
    user_id      text NOT NULL DEFAULT current_app_user(),
    role         smallint NOT NULL CHECK (role BETWEEN 1 AND 4),
    content      jsonb NOT NULL,
    attachments  jsonb NOT NULL DEFAULT '[]',
    tool_calls   jsonb NOT NULL DEFAULT '[]',
    tool_call_id text NOT NULL DEFAULT '',
    metadata     jsonb NOT NULL DEFAULT '{}',
    assistant_id text NOT NULL DEFAULT '',
    run_id       text NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (session_id, user_id) REFERENCES sessions (id, user_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX messages_by_session ON messages (session_id, seq);
CREATE INDEX messages_by_session_run ON messages (session_id, run_id, seq) WHERE run_id <> '';

CREATE TABLE message_feedback (
    message_id  uuid PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    user_id     text NOT NULL DEFAULT current_app_user(),
    rating      smallint CHECK (rating IN (1, 2)),
    comment     text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now()
);

-- Row-level security, enabled and forced (so even the table owner is bound by it), with
-- one policy per command on the current user, as the seed specifies.
ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY sessions_select ON sessions FOR SELECT USING (user_id = current_app_user());
CREATE POLICY sessions_insert ON sessions FOR INSERT WITH CHECK (user_id = current_app_user());
CREATE POLICY sessions_update ON sessions FOR UPDATE USING (user_id = current_app_user()) WITH CHECK (user_id = current_app_user());
CREATE POLICY sessions_delete ON sessions FOR DELETE USING (user_id = current_app_user());

ALTER TABLE messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE messages FORCE ROW LEVEL SECURITY;
CREATE POLICY messages_select ON messages FOR SELECT USING (user_id = current_app_user());
CREATE POLICY messages_insert ON messages FOR INSERT WITH CHECK (user_id = current_app_user());
CREATE POLICY messages_update ON messages FOR UPDATE USING (user_id = current_app_user()) WITH CHECK (user_id = current_app_user());
CREATE POLICY messages_delete ON messages FOR DELETE USING (user_id = current_app_user());

ALTER TABLE message_feedback ENABLE ROW LEVEL SECURITY;
ALTER TABLE message_feedback FORCE ROW LEVEL SECURITY;
CREATE POLICY feedback_select ON message_feedback FOR SELECT USING (user_id = current_app_user());
-- A user may only rate messages they can see (their own sessions' messages).
CREATE POLICY feedback_insert ON message_feedback FOR INSERT
    WITH CHECK (user_id = current_app_user() AND EXISTS (SELECT 1 FROM messages m WHERE m.id = message_id));
CREATE POLICY feedback_update ON message_feedback FOR UPDATE USING (user_id = current_app_user()) WITH CHECK (user_id = current_app_user());
CREATE POLICY feedback_delete ON message_feedback FOR DELETE USING (user_id = current_app_user());

-- Retention across all users is a maintenance job, not a user action: this function runs
-- with its owner's rights (the migration admin, which must be a superuser or BYPASSRLS for
-- it to see other users' rows) and can only delete sessions idle since before `idle_before`.
CREATE FUNCTION purge_idle_sessions(idle_before timestamptz, max_rows integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = sessions, pg_temp
    AS $$
DECLARE
    purged integer;
BEGIN
    WITH doomed AS (
        SELECT id FROM sessions WHERE update_time < idle_before
        ORDER BY update_time LIMIT max_rows FOR UPDATE SKIP LOCKED
    )
    DELETE FROM sessions s USING doomed WHERE s.id = doomed.id;
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END
$$;
REVOKE ALL ON FUNCTION purge_idle_sessions(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION purge_idle_sessions(timestamptz, integer) TO parley_sessions;
GRANT EXECUTE ON FUNCTION current_app_user() TO parley_sessions;
