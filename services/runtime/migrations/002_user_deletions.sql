-- Marks of per-user data deletions (services/runtime/user_data.py), so that nothing of a
-- deleted user reappears: a write that began before the deletion (a usage batch flushed
-- late, an upload in flight) is refused or dropped when it commits after it. The mark holds
-- the user id and the time, nothing else; the audit log says the same anyway.
--
-- The deletion takes an exclusive advisory lock on the user for its transaction; guarded
-- writes take the shared one before checking the mark, so either the write commits first
-- (and the deletion, waiting, removes it too) or it sees the mark.

CREATE TABLE user_deletions (
    user_id     text PRIMARY KEY,
    delete_time timestamptz NOT NULL
);
-- Both sides act as the user concerned (the deletion's transaction and the guarded write's
-- are set to that user), so the table is under row-level security like every user's rows.
ALTER TABLE user_deletions ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_deletions FORCE ROW LEVEL SECURITY;
CREATE POLICY user_deletions_select ON user_deletions FOR SELECT
    USING (user_id = nullif(current_setting('app.user_id', true), ''));
CREATE POLICY user_deletions_insert ON user_deletions FOR INSERT
    WITH CHECK (user_id = nullif(current_setting('app.user_id', true), ''));
CREATE POLICY user_deletions_update ON user_deletions FOR UPDATE
    USING (user_id = nullif(current_setting('app.user_id', true), ''))
    WITH CHECK (user_id = nullif(current_setting('app.user_id', true), ''));
CREATE POLICY user_deletions_delete ON user_deletions FOR DELETE
    USING (user_id = nullif(current_setting('app.user_id', true), ''));

-- True when the user's data was deleted at or after `since` (the write is then stale).
CREATE FUNCTION user_deleted_since(uid text, since timestamptz) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('parley-user-data:' || uid, 0));
    RETURN EXISTS (SELECT 1 FROM {schema}.user_deletions d WHERE d.user_id = uid AND d.delete_time >= since);
END
$$;
