-- Background processing joins the trace of the call that asked for it: the W3C traceparent
-- of the upload (files) and of the add-to-store call (entries) is kept with the item, and
-- claim_jobs hands it to the worker, whose processing spans are children of that call.
-- Only trace and span ids: no user data.
ALTER TABLE files ADD COLUMN trace_parent text NOT NULL DEFAULT '';
ALTER TABLE vector_store_files ADD COLUMN trace_parent text NOT NULL DEFAULT '';

DROP FUNCTION claim_jobs(text, double precision, integer, integer);
CREATE FUNCTION claim_jobs(worker text, lease_seconds double precision, max_jobs integer, max_attempts integer)
    RETURNS TABLE (job_kind text, job_user text, job_file uuid, job_store uuid, job_trace text)
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
    RETURNING 'file'::text, f.user_id, f.id, NULL::uuid, f.trace_parent;

    RETURN QUERY
    WITH c AS (
        SELECT e.entry_id FROM vector_store_files e JOIN files f ON f.id = e.file_id
        WHERE e.status = 1 AND f.status IN (3, 4) AND (e.lease_until IS NULL OR e.lease_until < now())
        ORDER BY e.create_time LIMIT max_jobs FOR UPDATE OF e SKIP LOCKED
    )
    UPDATE vector_store_files e SET lease_owner = worker, lease_until = now() + make_interval(secs => lease_seconds),
                                    attempts = e.attempts + 1
    FROM c WHERE e.entry_id = c.entry_id
    RETURNING 'entry'::text, e.user_id, e.file_id, e.vector_store_id, e.trace_parent;
END
$$;
REVOKE ALL ON FUNCTION claim_jobs(text, double precision, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION claim_jobs(text, double precision, integer, integer) TO parley_files;
