-- The run engine's durable queue, its leases, the live tail's notifications and the function
-- result cache (parley.runstore.v1: ClaimRuns, RenewRunLeases, WatchRunEvents,
-- Lookup/StoreFunctionResults). See docs/assistants.md.

-- Which engine replica holds a run, until when. A run in progress whose lease lapsed has
-- lost its replica; a queued run whose lease lapsed may be claimed again.
ALTER TABLE runs ADD COLUMN lease_owner text;
ALTER TABLE runs ADD COLUMN lease_expire_time timestamptz;
-- The claim scan walks the unended runs in creation order.
CREATE INDEX runs_unended ON runs (seq) WHERE status IN (1, 2, 3, 4);

-- Every change a watcher cares about (a status change, an event append) notifies, in the
-- changing transaction, so the notification arrives with the commit. The payload is the run
-- id only: watchers read what changed as their own user, under row-level security.
CREATE FUNCTION notify_run_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('parley_run_changes', NEW.id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER runs_notify_change AFTER UPDATE ON runs FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.last_sequence IS DISTINCT FROM NEW.last_sequence)
    EXECUTE FUNCTION notify_run_change();

-- Claiming works across users (the engine serves them all), so, like retention, it runs with
-- its owner's rights (the migration admin: superuser or BYPASSRLS) and can do exactly one
-- thing: hand the oldest claimable runs to `owner` for `lease`. SKIP LOCKED: two replicas
-- claiming at once get different runs, and neither waits for the other.
--   reason 1: queued at the head of its session (nothing earlier in the session unended,
--             its first event stored)
--   reason 2: in progress or cancelling without a live lease (its replica is gone)
--   reason 3: waiting for tool outputs past its expire_time
CREATE FUNCTION claim_runs(owner text, lease interval, max_runs integer)
    RETURNS TABLE (reason smallint, id uuid, user_id text, session_id uuid, assistant_id uuid, status smallint,
                   busy_session_strategy smallint, expire_time timestamptz, last_sequence bigint, body jsonb,
                   create_time timestamptz)
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = sessions, pg_temp
    AS $$
    WITH claimable AS (
        SELECT r.id,
               (CASE WHEN r.status = 1 THEN 1 WHEN r.status IN (2, 4) THEN 2 ELSE 3 END)::smallint AS reason
        FROM runs r
        WHERE r.status IN (1, 2, 3, 4)
          AND (r.lease_expire_time IS NULL OR r.lease_expire_time < now())
          AND (
                (r.status = 1 AND r.last_sequence >= 1 AND NOT EXISTS (
                    SELECT 1 FROM runs e WHERE e.session_id = r.session_id AND e.seq < r.seq
                                           AND e.status IN (1, 2, 3, 4)))
             OR r.status IN (2, 4)
             OR (r.status = 3 AND r.expire_time < now())
          )
        ORDER BY r.seq
        LIMIT max_runs
        FOR UPDATE OF r SKIP LOCKED
    )
    UPDATE runs SET lease_owner = owner, lease_expire_time = now() + lease
    FROM claimable c WHERE runs.id = c.id
    RETURNING c.reason, runs.id, runs.user_id, runs.session_id, runs.assistant_id, runs.status,
              runs.busy_session_strategy, runs.expire_time, runs.last_sequence, runs.body, runs.create_time
$$;
REVOKE ALL ON FUNCTION claim_runs(text, interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION claim_runs(text, interval, integer) TO parley_sessions;

-- Renewal, across users for the same reason: extends only leases `owner` still holds on
-- unended runs, and returns those.
CREATE FUNCTION renew_run_leases(owner text, lease interval, run_ids uuid[])
    RETURNS SETOF uuid
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = sessions, pg_temp
    AS $$
    UPDATE runs SET lease_expire_time = now() + lease
    WHERE id = ANY(run_ids) AND lease_owner = owner AND status IN (1, 2, 3, 4)
      AND lease_expire_time IS NOT NULL AND lease_expire_time >= now()
    RETURNING id
$$;
REVOKE ALL ON FUNCTION renew_run_leases(text, interval, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION renew_run_leases(text, interval, uuid[]) TO parley_sessions;

-- Outputs of function calls, reusable by the same user within the function's cache_ttl.
CREATE TABLE function_results (
    user_id          text NOT NULL DEFAULT current_app_user(),
    name             text NOT NULL,
    -- The key is the exact argument text; its digest keeps the index small.
    arguments_sha256 bytea NOT NULL,
    arguments        text NOT NULL,
    output           text NOT NULL,
    expire_time      timestamptz NOT NULL,
    create_time      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, name, arguments_sha256)
);
CREATE INDEX function_results_by_expiry ON function_results (expire_time);
ALTER TABLE function_results ENABLE ROW LEVEL SECURITY;
ALTER TABLE function_results FORCE ROW LEVEL SECURITY;
CREATE POLICY function_results_select ON function_results FOR SELECT USING (user_id = current_app_user());
CREATE POLICY function_results_insert ON function_results FOR INSERT WITH CHECK (user_id = current_app_user());
CREATE POLICY function_results_update ON function_results FOR UPDATE USING (user_id = current_app_user()) WITH CHECK (user_id = current_app_user());
CREATE POLICY function_results_delete ON function_results FOR DELETE USING (user_id = current_app_user());
