-- Gauges read at scrape time by /metrics (metrics_server.py).

-- name: queue_depth
-- Unfinished jobs per queue and state; the partial indexes jobs_waiting and jobs_running cover it.
-- Finished jobs are left out: they only grow until pruned and say nothing about backlog.
SELECT queue, state, count(*)::int AS n
FROM jobqueue.jobs
WHERE state IN ('queued', 'scheduled', 'running', 'retrying')
GROUP BY queue, state;

-- name: dead_letter_depth
SELECT queue, count(*)::int AS n FROM jobqueue.dead_letters GROUP BY queue;

-- name: queue_settings_names
-- Queues known by their settings row (paused before their first job, or emptied): their depth
-- series read 0 instead of being absent.
SELECT name FROM jobqueue.queues;
