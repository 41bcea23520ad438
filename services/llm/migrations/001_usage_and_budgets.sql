-- The usage ledger and per-user budgets. Runs as the admin with search_path = llm; the
-- service role parley_llm gets DML on these tables only.

-- The caller's user id for row-level security, set per transaction by the service from the
-- gateway-verified identity. NULL (no row matches) when unset.
CREATE FUNCTION current_app_user() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.user_id', true), '') $$;

-- Reports across users (GetUsage all_users) are for the admin scope only: the service sets
-- app.all_users for that one read-only transaction after checking the caller's scope.
CREATE FUNCTION app_reads_all_users() RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT coalesce(current_setting('app.all_users', true), '') = 'on' $$;

CREATE TABLE usage_records (
    id                  uuid PRIMARY KEY,
    user_id             text NOT NULL DEFAULT current_app_user(),
    create_time         timestamptz NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('chat', 'embed')),
    requested_model     text NOT NULL,
    -- The model that answered (after aliases and fallbacks), or the last one tried.
    model               text NOT NULL,
    provider            text NOT NULL,
    status              text NOT NULL CHECK (status IN ('ok', 'error', 'cancelled')),
    error_reason        text NOT NULL DEFAULT '',
    input_tokens        bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cached_input_tokens bigint NOT NULL DEFAULT 0,
    reasoning_tokens    bigint NOT NULL DEFAULT 0,
    cost_usd            double precision NOT NULL DEFAULT 0,
    latency_ms          double precision NOT NULL DEFAULT 0,
    ttft_ms             double precision,
    queue_ms            double precision NOT NULL DEFAULT 0,
    cache_hit           boolean NOT NULL DEFAULT false,
    streamed            boolean NOT NULL DEFAULT false,
    metadata            jsonb NOT NULL DEFAULT '{}'
);
-- Reports and budget checks read one user's calls over a time range.
CREATE INDEX usage_by_user_time ON usage_records (user_id, create_time);
CREATE INDEX usage_by_time ON usage_records (create_time);

CREATE TABLE budgets (
    user_id     text PRIMARY KEY DEFAULT current_app_user(),
    -- [{"period": 1..3, "limit_usd": x | "limit_tokens": n, "admin_set": bool}, ...]
    limits      jsonb NOT NULL DEFAULT '[]',
    update_time timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE usage_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_records FORCE ROW LEVEL SECURITY;
CREATE POLICY usage_select ON usage_records FOR SELECT USING (user_id = current_app_user() OR app_reads_all_users());
CREATE POLICY usage_insert ON usage_records FOR INSERT WITH CHECK (user_id = current_app_user());
CREATE POLICY usage_update ON usage_records FOR UPDATE USING (user_id = current_app_user()) WITH CHECK (user_id = current_app_user());
CREATE POLICY usage_delete ON usage_records FOR DELETE USING (user_id = current_app_user());

ALTER TABLE budgets ENABLE ROW LEVEL SECURITY;
ALTER TABLE budgets FORCE ROW LEVEL SECURITY;
CREATE POLICY budgets_select ON budgets FOR SELECT USING (user_id = current_app_user());
CREATE POLICY budgets_insert ON budgets FOR INSERT WITH CHECK (user_id = current_app_user());
CREATE POLICY budgets_update ON budgets FOR UPDATE USING (user_id = current_app_user()) WITH CHECK (user_id = current_app_user());
CREATE POLICY budgets_delete ON budgets FOR DELETE USING (user_id = current_app_user());
