-- API keys. Runs as the admin with search_path = gateway; the service role parley_gateway
-- gets DML on the table, under forced row-level security on the owning user.
--
-- Authentication must find a key by its secret before anyone is known, so that one read
-- (and the lazy last-used update) goes through two SECURITY DEFINER functions owned by
-- parley_gateway_auth, a role that cannot log in and may only read the table and write
-- last_used_time. They match on the SHA-256 of a high-entropy secret: knowing the hash
-- presupposes the secret.

CREATE FUNCTION current_app_user() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.user_id', true), '') $$;

CREATE TABLE api_keys (
    id                          uuid PRIMARY KEY,
    user_id                     text NOT NULL DEFAULT current_app_user(),
    name                        text NOT NULL DEFAULT '',
    -- The first characters of the current secret, for people to recognise it.
    prefix                      text NOT NULL,
    secret_hash                 bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    -- The secret replaced by the latest rotation, valid until previous_secret_expire_time.
    previous_secret_hash        bytea UNIQUE CHECK (length(previous_secret_hash) = 32),
    previous_secret_expire_time timestamptz,
    scopes                      text[] NOT NULL CHECK (cardinality(scopes) > 0),
    requests_per_minute         integer NOT NULL DEFAULT 0 CHECK (requests_per_minute >= 0),
    concurrent_streams          integer NOT NULL DEFAULT 0 CHECK (concurrent_streams >= 0),
    tokens_per_minute           bigint NOT NULL DEFAULT 0 CHECK (tokens_per_minute >= 0),
    redact_prompt_pii           boolean NOT NULL DEFAULT false,
    create_time                 timestamptz NOT NULL DEFAULT now(),
    expire_time                 timestamptz,
    last_used_time              timestamptz,
    revoke_time                 timestamptz,
    rotate_time                 timestamptz
);
CREATE INDEX api_keys_by_user ON api_keys (user_id, create_time DESC, id DESC);

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY api_keys_select ON api_keys FOR SELECT USING (user_id = current_app_user());
CREATE POLICY api_keys_insert ON api_keys FOR INSERT WITH CHECK (user_id = current_app_user());
CREATE POLICY api_keys_update ON api_keys FOR UPDATE USING (user_id = current_app_user()) WITH CHECK (user_id = current_app_user());
CREATE POLICY api_keys_delete ON api_keys FOR DELETE USING (user_id = current_app_user());

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'parley_gateway_auth') THEN
        CREATE ROLE parley_gateway_auth NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA gateway TO parley_gateway_auth;
GRANT SELECT, UPDATE (last_used_time) ON api_keys TO parley_gateway_auth;
CREATE POLICY api_keys_auth_select ON api_keys FOR SELECT TO parley_gateway_auth USING (true);
CREATE POLICY api_keys_auth_touch ON api_keys FOR UPDATE TO parley_gateway_auth USING (true) WITH CHECK (true);

-- The key whose current or previous secret hashes to `hash`, whatever its state: the
-- caller decides about revocation, expiry and the grace period.
CREATE FUNCTION find_api_key(hash bytea) RETURNS SETOF api_keys
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = gateway, pg_temp
    AS $$ SELECT * FROM api_keys WHERE secret_hash = hash OR previous_secret_hash = hash LIMIT 1 $$;

-- Records use of keys in one statement, never moving last_used_time backwards.
CREATE FUNCTION touch_api_keys(ids uuid[], used_at timestamptz[]) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = gateway, pg_temp
    AS $$
        UPDATE api_keys k SET last_used_time = t.used_at
        FROM unnest(ids, used_at) AS t(id, used_at)
        WHERE k.id = t.id AND (k.last_used_time IS NULL OR k.last_used_time < t.used_at)
    $$;

ALTER FUNCTION find_api_key(bytea) OWNER TO parley_gateway_auth;
ALTER FUNCTION touch_api_keys(uuid[], timestamptz[]) OWNER TO parley_gateway_auth;
REVOKE ALL ON FUNCTION find_api_key(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION touch_api_keys(uuid[], timestamptz[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION find_api_key(bytea) TO parley_gateway;
GRANT EXECUTE ON FUNCTION touch_api_keys(uuid[], timestamptz[]) TO parley_gateway;
