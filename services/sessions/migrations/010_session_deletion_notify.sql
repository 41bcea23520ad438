-- Session deletions are announced (parley.runstore.v1 WatchSessionDeletions), so the run
-- engine deletes what it keeps per session in other services (the code interpreter's
-- sandbox). The NOTIFY is sent in the deleting transaction (DeleteSession, the retention
-- purge) and delivered when it commits; nothing is sent for a rolled-back delete.
CREATE FUNCTION notify_session_deletion() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('parley_session_deletions',
                      json_build_object('session_id', OLD.id::text, 'user_id', OLD.user_id)::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER sessions_notify_deletion AFTER DELETE ON sessions FOR EACH ROW
    EXECUTE FUNCTION notify_session_deletion();
