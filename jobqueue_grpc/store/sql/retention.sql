-- Retention: finished jobs and dead letters past their keep period go, a small batch per statement.
-- SKIP LOCKED: rows another pruner (or anything else) holds are left for the next round, so pruning
-- never waits on dispatch and several replicas can prune at once.

-- name: prune_jobs
-- Up to $3 jobs in terminal state $1 that finished more than $2 seconds ago. The literal state list
-- repeats the partial index's predicate so a generic plan can still use it.
DELETE FROM jobqueue.jobs
WHERE id IN (
    SELECT id FROM jobqueue.jobs
    WHERE state IN ('succeeded', 'failed', 'cancelled')
      AND state = $1
      AND finished_at < now() - make_interval(secs => $2)
    ORDER BY finished_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
);

-- name: prune_dead_letters
-- Up to $2 dead letters that failed more than $1 seconds ago, with their failed job rows.
WITH picked AS (
    SELECT job_id FROM jobqueue.dead_letters
    WHERE failed_at < now() - make_interval(secs => $1)
    ORDER BY failed_at, job_id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), dl AS (
    DELETE FROM jobqueue.dead_letters d USING picked WHERE d.job_id = picked.job_id
    RETURNING d.job_id
), {delete_failed_rows}
SELECT count(*) FROM dl;
