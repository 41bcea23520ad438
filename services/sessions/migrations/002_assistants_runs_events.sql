-- Storage for the gateway's assistants run engine (parley.runstore.v1.RunStoreService):
-- assistants, runs, run steps and each run's event log. Fields that are queried or checked
-- are columns; the rest of each resource is its protobuf JSON in `body`.

CREATE TABLE assistants (
    id          uuid PRIMARY KEY,
    user_id     text NOT NULL DEFAULT current_app_user(),
    body        jsonb NOT NULL DEFAULT '{}',
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now()
);
-- Listing a user's assistants newest first reads one page.
CREATE INDEX assistants_by_user ON assistants (user_id, create_time DESC, id DESC);

CREATE TABLE runs (
    -- Position within the session: run creation locks the session row first, so seq grows
    -- in commit order within a session ("oldest active run" and keyset pages rely on it).
    seq                   bigint GENERATED ALWAYS AS IDENTITY,
    id                    uuid PRIMARY KEY,
    user_id               text NOT NULL DEFAULT current_app_user(),
    session_id            uuid NOT NULL,
    -- No foreign key: deleting an assistant keeps its runs.
    assistant_id          uuid NOT NULL,
    status                smallint NOT NULL CHECK (status BETWEEN 1 AND 9),
    busy_session_strategy smallint NOT NULL CHECK (busy_session_strategy BETWEEN 1 AND 3),
    expire_time           timestamptz,
    -- Sequence of the latest event; moved only together with an event append.
    last_sequence         bigint NOT NULL DEFAULT 0 CHECK (last_sequence >= 0),
    body                  jsonb NOT NULL DEFAULT '{}',
    create_time           timestamptz NOT NULL DEFAULT now(),
    update_time           timestamptz NOT NULL DEFAULT now(),
    -- A run's owner is its session's owner; steps and events point here the same way.
    FOREIGN KEY (session_id, user_id) REFERENCES sessions (id, user_id) ON DELETE CASCADE,
    UNIQUE (id, user_id)
);
CREATE UNIQUE INDEX runs_by_session ON runs (session_id, seq);
-- The session's active run is the first entry here: one index probe however long the history.
CREATE INDEX runs_active_by_session ON runs (session_id, seq) WHERE status IN (1, 2, 3, 4);

CREATE TABLE run_steps (
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    id           uuid PRIMARY KEY,
    user_id      text NOT NULL DEFAULT current_app_user(),
    run_id       uuid NOT NULL,
    session_id   uuid NOT NULL,
    assistant_id uuid NOT NULL,
    type         smallint NOT NULL CHECK (type BETWEEN 1 AND 2),
    status       smallint NOT NULL CHECK (status BETWEEN 1 AND 5),
    body         jsonb NOT NULL DEFAULT '{}',
    create_time  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (run_id, user_id) REFERENCES runs (id, user_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX run_steps_by_run ON run_steps (run_id, seq);

CREATE TABLE run_events (
    run_id      uuid NOT NULL,
    sequence    bigint NOT NULL CHECK (sequence >= 1),
    user_id     text NOT NULL DEFAULT current_app_user(),
    create_time timestamptz NOT NULL DEFAULT now(),
    body        jsonb NOT NULL,
    -- Replay after a sequence number is one index range scan; a duplicate cannot be stored.
    PRIMARY KEY (run_id, sequence),
    FOREIGN KEY (run_id, user_id) REFERENCES runs (id, user_id) ON DELETE CASCADE
);

-- Row-level security, enabled and forced, one policy per command on the current user, as
-- for sessions and messages.
ALTER TABLE assistants ENABLE ROW LEVEL SECURITY;
ALTER TABLE assistants FORCE ROW LEVEL SECURITY;
CREATE POLICY assistants_select ON assistants FOR SELECT USING (user_id = current_app_user());
CREATE POLICY assistants_insert ON assistants FOR INSERT WITH CHECK (user_id = current_app_user());
CREATE POLICY assistants_update ON assistants FOR UPDATE USING (user_id = current_app_user()) WITH CHECK (user_id = current_app_user());
CREATE POLICY assistants_delete ON assistants FOR DELETE USING (user_id = current_app_user());

ALTER TABLE runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE runs FORCE ROW LEVEL SECURITY;
CREATE POLICY runs_select ON runs FOR SELECT USING (user_id = current_app_user());
CREATE POLICY runs_insert ON runs FOR INSERT WITH CHECK (user_id = current_app_user());
CREATE POLICY runs_update ON runs FOR UPDATE USING (user_id = current_app_user()) WITH CHECK (user_id = current_app_user());
CREATE POLICY runs_delete ON runs FOR DELETE USING (user_id = current_app_user());

ALTER TABLE run_steps ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_steps FORCE ROW LEVEL SECURITY;
CREATE POLICY run_steps_select ON run_steps FOR SELECT USING (user_id = current_app_user());
CREATE POLICY run_steps_insert ON run_steps FOR INSERT WITH CHECK (user_id = current_app_user());
CREATE POLICY run_steps_update ON run_steps FOR UPDATE USING (user_id = current_app_user()) WITH CHECK (user_id = current_app_user());
CREATE POLICY run_steps_delete ON run_steps FOR DELETE USING (user_id = current_app_user());

ALTER TABLE run_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_events FORCE ROW LEVEL SECURITY;
CREATE POLICY run_events_select ON run_events FOR SELECT USING (user_id = current_app_user());
CREATE POLICY run_events_insert ON run_events FOR INSERT WITH CHECK (user_id = current_app_user());
CREATE POLICY run_events_update ON run_events FOR UPDATE USING (user_id = current_app_user()) WITH CHECK (user_id = current_app_user());
CREATE POLICY run_events_delete ON run_events FOR DELETE USING (user_id = current_app_user());
