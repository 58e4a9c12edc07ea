-- WatchJob / WatchJobs: who watches (job_watchers, read by the triggers of migration 0050), and
-- the jobs a change notice names.

-- name: add_watcher
-- Run on the Listener's own connection: the row lives as long as that session (prune_watchers).
INSERT INTO jobqueue.job_watchers (backend) VALUES (pg_backend_pid()) ON CONFLICT DO NOTHING;

-- name: remove_watcher
DELETE FROM jobqueue.job_watchers WHERE backend = pg_backend_pid();

-- name: prune_watchers
-- Rows of sessions that are gone (a replica that died with watchers): they would only cost
-- NOTIFYs nobody hears.
DELETE FROM jobqueue.job_watchers w
WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = w.backend);

-- name: jobs_by_ids
SELECT {job_columns} FROM jobqueue.jobs WHERE id = ANY($1::uuid[]);
