-- Full-text candidates for a search, as a function that runs with its owner's rights.
--
-- Why: under row-level security PostgreSQL evaluates the policy before any operator that is
-- not LEAKPROOF, and text search's @@ is not, so with RLS on `chunks` the GIN index cannot
-- be used and every search read the whole table. This function reads `chunks` without RLS
-- and therefore states the owner check itself: only chunks of the given entries AND of the
-- current app user (the same predicate the policies use). The entry ids come from a query
-- under RLS in the caller's transaction.
CREATE FUNCTION text_candidates(entry_ids bigint[], cfg regconfig, query text, max_rows integer, max_matches integer)
    RETURNS TABLE (chunk_id bigint, rank real)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = files, public, pg_temp
    AS $$
DECLARE
    owner text := current_app_user();
    q_all tsquery := plainto_tsquery(cfg, query);
    q_any tsquery := replace(plainto_tsquery(cfg, query)::text, ' & ', ' | ')::tsquery;
    found integer;
BEGIN
    IF owner IS NULL OR numnode(q_all) = 0 THEN
        RETURN;
    END IF;
    -- Strict: every term of the query (an identifier matches exactly).
    RETURN QUERY
        SELECT m.id, ts_rank_cd(m.tsv, q_all, 32)
        FROM (SELECT c.id, c.tsv FROM chunks c
              WHERE c.tsv @@ q_all AND c.entry_id = ANY(entry_ids) AND c.user_id = owner
              LIMIT max_matches) m
        ORDER BY 2 DESC, 1 LIMIT max_rows;
    GET DIAGNOSTICS found = ROW_COUNT;
    IF found > 0 THEN
        RETURN;
    END IF;
    -- Relaxed: any term (a question rarely has all its words in one passage).
    RETURN QUERY
        SELECT m.id, ts_rank_cd(m.tsv, q_any, 32)
        FROM (SELECT c.id, c.tsv FROM chunks c
              WHERE c.tsv @@ q_any AND c.entry_id = ANY(entry_ids) AND c.user_id = owner
              LIMIT max_matches) m
        ORDER BY 2 DESC, 1 LIMIT max_rows;
END
$$;
REVOKE ALL ON FUNCTION text_candidates(bigint[], regconfig, text, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION text_candidates(bigint[], regconfig, text, integer, integer) TO parley_files;
