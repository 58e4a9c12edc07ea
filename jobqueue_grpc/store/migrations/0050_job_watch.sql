-- Live job changes for WatchJob / WatchJobs (issue 15).
--
-- A replica with at least one watcher has a row here: the backend pid of its LISTEN connection
-- (store/notify.py Listener). While the table is empty, the triggers below return at once, so
-- a database nobody watches pays one tiny lookup per statement that writes jobs, not a NOTIFY.
-- Rows of replicas that died are removed by the next Listener that (re)connects.
CREATE TABLE jobqueue.job_watchers (
    backend  integer PRIMARY KEY,
    since    timestamptz NOT NULL DEFAULT now()
);

-- One NOTIFY per statement (per 200 jobs), payload the changed ids separated by spaces, on
-- the channel store/notify.py names CHANGES_CHANNEL (tests/test_watch.py checks they agree).
-- An update counts when what a watcher sees changed: state, attempt, progress, result or a
-- cancel request; a lease extension does not.
CREATE FUNCTION jobqueue.notify_job_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM jobqueue.job_watchers) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('jobqueue_job_changes', string_agg(c.id::text, ' '))
        FROM (SELECT n.id, (row_number() OVER () - 1) / 200 AS chunk FROM new_rows n) c
        GROUP BY c.chunk;
    ELSE
        PERFORM pg_notify('jobqueue_job_changes', string_agg(c.id::text, ' '))
        FROM (
            SELECT n.id, (row_number() OVER () - 1) / 200 AS chunk
            FROM new_rows n JOIN old_rows o ON o.id = n.id
            WHERE (n.state, n.attempt, n.progress, n.result, n.cancel_requested)
                  IS DISTINCT FROM (o.state, o.attempt, o.progress, o.result, o.cancel_requested)
        ) c
        GROUP BY c.chunk;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_watch_insert AFTER INSERT ON jobqueue.jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobqueue.notify_job_changes();

CREATE TRIGGER jobs_watch_update AFTER UPDATE ON jobqueue.jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobqueue.notify_job_changes();
