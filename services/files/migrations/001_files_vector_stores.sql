-- Files, their extracted text, vector stores, store entries and chunks with embeddings.
-- Runs as the admin with search_path = files, public; the service role parley_files gets
-- DML on these tables only. pgvector must be available to this server (the embedded
-- PostgreSQL from pgserver bundles it; a plain server needs the `vector` extension package).
CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public;

-- The caller's user id for row-level security, set per transaction from the verified identity.
CREATE FUNCTION current_app_user() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.user_id', true), '') $$;

CREATE TABLE files (
    id                  uuid PRIMARY KEY,
    user_id             text NOT NULL DEFAULT current_app_user(),
    filename            text NOT NULL,
    size_bytes          bigint NOT NULL CHECK (size_bytes >= 0),
    media_type          text NOT NULL,
    declared_media_type text NOT NULL DEFAULT '',
    purpose             smallint NOT NULL CHECK (purpose BETWEEN 1 AND 4),
    sha256              text NOT NULL,
    -- 1 uploaded, 2 processing, 3 processed, 4 error (FileStatus).
    status              smallint NOT NULL CHECK (status BETWEEN 1 AND 4),
    status_reason       text NOT NULL DEFAULT '',
    -- For status 4: a VectorStoreFileErrorCode, copied to the file's store entries.
    error_code          smallint NOT NULL DEFAULT 0,
    attributes          jsonb NOT NULL DEFAULT '{}',
    page_count          integer NOT NULL DEFAULT 0,
    text_chars          bigint NOT NULL DEFAULT 0,
    -- Relative path of the bytes under the storage root; never derived from the filename.
    storage_key         text NOT NULL,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    -- Background processing: which worker holds the file and until when (a crashed
    -- worker's lease runs out and another, or the restarted one, picks the file up).
    lease_owner         text,
    lease_until         timestamptz,
    attempts            integer NOT NULL DEFAULT 0,
    UNIQUE (id, user_id)
);
CREATE INDEX files_by_user ON files (user_id, create_time DESC, id DESC);
CREATE INDEX files_by_user_purpose ON files (user_id, purpose, create_time DESC, id DESC);
CREATE INDEX files_pending ON files (create_time) WHERE status IN (1, 2);

-- The text extracted from a file, kept so that adding it to more stores does not extract
-- again. page_starts[i] is the character offset where page i+1 begins (empty: no pages).
CREATE TABLE file_texts (
    file_id     uuid PRIMARY KEY,
    user_id     text NOT NULL DEFAULT current_app_user(),
    text        text NOT NULL,
    page_starts integer[] NOT NULL DEFAULT '{}',
    FOREIGN KEY (file_id, user_id) REFERENCES files (id, user_id) ON DELETE CASCADE
);

CREATE TABLE vector_stores (
    id                   uuid PRIMARY KEY,
    user_id              text NOT NULL DEFAULT current_app_user(),
    name                 text NOT NULL DEFAULT '',
    metadata             jsonb NOT NULL DEFAULT '{}',
    expires_after_days   integer CHECK (expires_after_days BETWEEN 1 AND 365),
    expired              boolean NOT NULL DEFAULT false,
    last_active_time     timestamptz NOT NULL DEFAULT now(),
    -- The default chunking for files added later (ChunkingStrategyType and sizes).
    chunking_type        smallint NOT NULL,
    chunk_max_tokens     integer NOT NULL,
    chunk_overlap_tokens integer NOT NULL,
    embedding_model      text NOT NULL,
    embedding_dimensions integer NOT NULL CHECK (embedding_dimensions > 0),
    -- Tokens one input of the model may have: the upper bound of chunk sizes.
    embedding_window     integer NOT NULL,
    create_time          timestamptz NOT NULL DEFAULT now(),
    update_time          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, user_id)
);
CREATE INDEX vector_stores_by_user ON vector_stores (user_id, create_time DESC, id DESC);

-- A file's membership in a store. entry_id is the compact key chunks hang from.
CREATE TABLE vector_store_files (
    entry_id             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    vector_store_id      uuid NOT NULL,
    file_id              uuid NOT NULL,
    user_id              text NOT NULL DEFAULT current_app_user(),
    -- 1 in progress, 2 completed, 3 failed, 4 cancelled (VectorStoreFileStatus).
    status               smallint NOT NULL CHECK (status BETWEEN 1 AND 4),
    error_code           smallint NOT NULL DEFAULT 0,
    error_message        text NOT NULL DEFAULT '',
    chunking_type        smallint NOT NULL,
    chunk_max_tokens     integer NOT NULL,
    chunk_overlap_tokens integer NOT NULL,
    attributes           jsonb NOT NULL DEFAULT '{}',
    chunk_count          integer NOT NULL DEFAULT 0,
    usage_bytes          bigint NOT NULL DEFAULT 0,
    create_time          timestamptz NOT NULL DEFAULT now(),
    update_time          timestamptz NOT NULL DEFAULT now(),
    lease_owner          text,
    lease_until          timestamptz,
    attempts             integer NOT NULL DEFAULT 0,
    PRIMARY KEY (vector_store_id, file_id),
    UNIQUE (entry_id, user_id),
    FOREIGN KEY (vector_store_id, user_id) REFERENCES vector_stores (id, user_id) ON DELETE CASCADE,
    FOREIGN KEY (file_id, user_id) REFERENCES files (id, user_id) ON DELETE CASCADE
);
CREATE INDEX vector_store_files_by_store ON vector_store_files (vector_store_id, create_time DESC, file_id DESC);
CREATE INDEX vector_store_files_by_file ON vector_store_files (file_id);
CREATE INDEX vector_store_files_pending ON vector_store_files (create_time) WHERE status = 1;

-- One chunk of a file's text in one store: its text (full-text indexed) and embedding.
-- Stores may use models of different sizes, so `embedding` is untyped and each supported
-- size has its own partial HNSW index (pgvector's way to index mixed dimensions).
CREATE TABLE chunks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id    bigint NOT NULL,
    user_id     text NOT NULL DEFAULT current_app_user(),
    chunk_index integer NOT NULL,
    page_number integer NOT NULL DEFAULT 0,
    text        text NOT NULL,
    ts_config   regconfig NOT NULL,
    tsv         tsvector GENERATED ALWAYS AS (to_tsvector(ts_config, text)) STORED,
    dims        integer NOT NULL,
    embedding   vector NOT NULL,
    FOREIGN KEY (entry_id, user_id) REFERENCES vector_store_files (entry_id, user_id) ON DELETE CASCADE
);
CREATE INDEX chunks_by_entry ON chunks (entry_id, chunk_index);
CREATE INDEX chunks_text ON chunks USING gin (tsv);
CREATE INDEX chunks_hnsw_384 ON chunks USING hnsw ((embedding::vector(384)) vector_cosine_ops) WHERE dims = 384;
CREATE INDEX chunks_hnsw_768 ON chunks USING hnsw ((embedding::vector(768)) vector_cosine_ops) WHERE dims = 768;
CREATE INDEX chunks_hnsw_1024 ON chunks USING hnsw ((embedding::vector(1024)) vector_cosine_ops) WHERE dims = 1024;
CREATE INDEX chunks_hnsw_1536 ON chunks USING hnsw ((embedding::vector(1536)) vector_cosine_ops) WHERE dims = 1536;

-- Row-level security, enabled and forced, one policy per command on the current user.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['files', 'file_texts', 'vector_stores', 'vector_store_files', 'chunks'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY %I ON %I FOR SELECT USING (user_id = current_app_user())', t || '_select', t);
        EXECUTE format('CREATE POLICY %I ON %I FOR INSERT WITH CHECK (user_id = current_app_user())', t || '_insert', t);
        EXECUTE format('CREATE POLICY %I ON %I FOR UPDATE USING (user_id = current_app_user()) '
                       'WITH CHECK (user_id = current_app_user())', t || '_update', t);
        EXECUTE format('CREATE POLICY %I ON %I FOR DELETE USING (user_id = current_app_user())', t || '_delete', t);
    END LOOP;
END
$$;

-- Background work spans users, so it is found by these maintenance functions, which run
-- with their owner's rights (the migration admin) and reveal only ids and owners of pending
-- work. Everything done to a user's rows afterwards runs as that user, under RLS.

-- Leases up to max_jobs pending items: files to extract (status uploaded/processing) and
-- store entries to chunk and embed (in progress, whose file has finished). Items whose
-- lease ran out too often are failed instead, so a file that kills its worker cannot loop.
CREATE FUNCTION claim_jobs(worker text, lease_seconds double precision, max_jobs integer, max_attempts integer)
    RETURNS TABLE (job_kind text, job_user text, job_file uuid, job_store uuid)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = files, public, pg_temp
    AS $$
BEGIN
    UPDATE files f SET status = 4, error_code = 1, update_time = now(), lease_owner = NULL, lease_until = NULL,
        status_reason = 'Processing was interrupted ' || f.attempts || ' times; upload the file again, and if it keeps failing, report it.'
    WHERE f.status IN (1, 2) AND f.attempts >= max_attempts AND (f.lease_until IS NULL OR f.lease_until < now());
    UPDATE vector_store_files e SET status = 3, error_code = 1, update_time = now(), lease_owner = NULL, lease_until = NULL,
        error_message = 'Chunking and embedding were interrupted ' || e.attempts || ' times; remove the file from the store and add it again.'
    WHERE e.status = 1 AND e.attempts >= max_attempts AND (e.lease_until IS NULL OR e.lease_until < now());

    RETURN QUERY
    WITH c AS (
        SELECT f.id FROM files f
        WHERE f.status IN (1, 2) AND (f.lease_until IS NULL OR f.lease_until < now())
        ORDER BY f.create_time LIMIT max_jobs FOR UPDATE SKIP LOCKED
    )
    UPDATE files f SET lease_owner = worker, lease_until = now() + make_interval(secs => lease_seconds),
                       attempts = f.attempts + 1
    FROM c WHERE f.id = c.id
    RETURNING 'file'::text, f.user_id, f.id, NULL::uuid;

    RETURN QUERY
    WITH c AS (
        SELECT e.entry_id FROM vector_store_files e JOIN files f ON f.id = e.file_id
        WHERE e.status = 1 AND f.status IN (3, 4) AND (e.lease_until IS NULL OR e.lease_until < now())
        ORDER BY e.create_time LIMIT max_jobs FOR UPDATE OF e SKIP LOCKED
    )
    UPDATE vector_store_files e SET lease_owner = worker, lease_until = now() + make_interval(secs => lease_seconds),
                                    attempts = e.attempts + 1
    FROM c WHERE e.entry_id = c.entry_id
    RETURNING 'entry'::text, e.user_id, e.file_id, e.vector_store_id;
END
$$;

-- Extends the leases a live worker holds on its unfinished items.
CREATE FUNCTION renew_leases(worker text, lease_seconds double precision) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path = files, public, pg_temp
    AS $$
    UPDATE files SET lease_until = now() + make_interval(secs => lease_seconds)
    WHERE lease_owner = worker AND status IN (1, 2);
    UPDATE vector_store_files SET lease_until = now() + make_interval(secs => lease_seconds)
    WHERE lease_owner = worker AND status = 1;
$$;

-- Marks stores idle past their expiration as expired and deletes their chunks.
CREATE FUNCTION expire_vector_stores() RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = files, public, pg_temp
    AS $$
DECLARE
    n integer;
BEGIN
    WITH doomed AS (
        UPDATE vector_stores SET expired = true, update_time = now()
        WHERE NOT expired AND expires_after_days IS NOT NULL
          AND last_active_time + make_interval(days => expires_after_days) < now()
        RETURNING id
    )
    DELETE FROM chunks c USING vector_store_files e, doomed d
    WHERE c.entry_id = e.entry_id AND e.vector_store_id = d.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Which of these storage keys belong to a file row (for sweeping orphaned bytes left by a
-- crash between the rename and the commit).
CREATE FUNCTION known_storage_keys(keys text[]) RETURNS SETOF text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = files, public, pg_temp
    AS $$ SELECT storage_key FROM files WHERE storage_key = ANY(keys) $$;

REVOKE ALL ON FUNCTION claim_jobs(text, double precision, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION renew_leases(text, double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION expire_vector_stores() FROM PUBLIC;
REVOKE ALL ON FUNCTION known_storage_keys(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION claim_jobs(text, double precision, integer, integer) TO parley_files;
GRANT EXECUTE ON FUNCTION renew_leases(text, double precision) TO parley_files;
GRANT EXECUTE ON FUNCTION expire_vector_stores() TO parley_files;
GRANT EXECUTE ON FUNCTION known_storage_keys(text[]) TO parley_files;
GRANT EXECUTE ON FUNCTION current_app_user() TO parley_files;
