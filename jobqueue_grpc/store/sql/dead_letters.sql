-- DeadLetterService queries. A dead letter is a self-contained copy of a failed job; the job's own
-- row stays in jobqueue.jobs as 'failed' until pruned. Every filtered statement takes the same four
-- filter parameters first: $1 queue, $2 kind, $3 failed strictly before, $4 failed at or after
-- (NULL matches everything).

-- fragment: dead_letter_filter
($1::text IS NULL OR queue = $1)
  AND ($2::text IS NULL OR kind = $2)
  AND ($3::timestamptz IS NULL OR failed_at < $3)
  AND ($4::timestamptz IS NULL OR failed_at >= $4)

-- fragment: requeue_upsert
-- The job of each dead letter in `dl` back in its queue, 'queued' with fresh attempts. The job row
-- is upserted, so a requeue works even after the failed row was pruned; an idempotency key since
-- taken by another job is dropped rather than refused. The concurrency key (flow control) comes
-- back with a pruned row; a row still there keeps its own.
    INSERT INTO jobqueue.jobs AS j (id, queue, kind, payload, priority, state, attempt, max_attempts,
                                    run_at, idempotency_key, lease_seconds, backoff_base,
                                    backoff_cap, created_at, concurrency_key)
    SELECT dl.job_id, dl.queue, dl.kind, dl.payload, dl.priority, 'queued', 0, dl.max_attempts,
           now(),
           CASE WHEN EXISTS (SELECT 1 FROM jobqueue.jobs o
                             WHERE o.idempotency_key = dl.idempotency_key AND o.id <> dl.job_id)
                THEN NULL ELSE dl.idempotency_key END,
           dl.lease_seconds, dl.backoff_base, dl.backoff_cap, dl.created_at, dl.concurrency_key
    FROM dl
    ON CONFLICT (id) DO UPDATE
    SET state = 'queued', attempt = 0, errors = '[]', run_at = now(), last_sleep = NULL,
        lease_token = NULL, lease_expires_at = NULL, worker_id = NULL, stream_id = NULL,
        cancel_requested = false, result = NULL, progress = NULL, started_at = NULL,
        finished_at = NULL, updated_at = now()

-- fragment: delete_failed_rows
-- A dead letter and its failed job row go together: the job rows of the dead letters deleted in
-- `dl` (each statement that deletes dead letters ends in this), so nothing is left half.
j AS (
    DELETE FROM jobqueue.jobs WHERE id IN (SELECT job_id FROM dl) AND state = 'failed'
)

-- name: get_dead_letter
SELECT {dead_letter_columns} FROM jobqueue.dead_letters WHERE job_id = $1;

-- name: list_dead_letters
-- Newest failure first; ($5, $6) is the keyset cursor: the last row of the previous page.
SELECT {dead_letter_columns} FROM jobqueue.dead_letters
WHERE {dead_letter_filter}
  AND (failed_at, job_id) < ($5::timestamptz, $6::uuid)
ORDER BY failed_at DESC, job_id DESC
LIMIT $7;

-- name: dead_letter_stats
-- One statement, one snapshot: the total row (grouping 3), per queue (1) and per kind (2).
SELECT GROUPING(queue, kind) AS g, queue, kind, count(*) AS n,
       min(failed_at) AS oldest, max(failed_at) AS newest
FROM jobqueue.dead_letters
WHERE {dead_letter_filter}
GROUP BY GROUPING SETS ((), (queue), (kind))
ORDER BY g DESC, n DESC, queue, kind;

-- name: count_dead_letters
SELECT count(*) FROM jobqueue.dead_letters
WHERE {dead_letter_filter};

-- name: db_now
SELECT now();

-- name: requeue_dead_letter
-- Moves one dead letter back to its queue in one statement: the dead letter goes, the job comes back
-- 'queued' with fresh attempts. The job row is upserted, so a requeue works even after the failed
-- row was pruned; an idempotency key since taken by another job is dropped rather than refused.
WITH dl AS (
    DELETE FROM jobqueue.dead_letters WHERE job_id = $1 RETURNING *
), up AS (
{requeue_upsert}
    RETURNING {job_columns}
)
SELECT * FROM up;

-- name: requeue_dead_letters_chunk
-- Up to $6 matching dead letters (oldest failure first, failed at or before $5) back to their
-- queues, as requeue_dead_letter does for one; returns the requeued jobs' queues.
-- SKIP LOCKED: rows another call is moving right now are left to it.
WITH picked AS (
    SELECT job_id FROM jobqueue.dead_letters
    WHERE {dead_letter_filter}
      AND failed_at <= $5
    ORDER BY failed_at, job_id
    LIMIT $6
    FOR UPDATE SKIP LOCKED
), dl AS (
    DELETE FROM jobqueue.dead_letters d USING picked WHERE d.job_id = picked.job_id RETURNING d.*
), up AS (
{requeue_upsert}
    RETURNING j.queue
)
SELECT queue FROM up;

-- name: delete_dead_letter
-- The dead letter and its failed job row go together: nothing is left half.
WITH dl AS (
    DELETE FROM jobqueue.dead_letters WHERE job_id = $1 RETURNING job_id
), {delete_failed_rows}
SELECT count(*) FROM dl;

-- name: purge_dead_letters_chunk
-- Up to $6 matching dead letters (oldest failure first, failed at or before $5) deleted with their
-- failed job rows; returns how many.
WITH picked AS (
    SELECT job_id FROM jobqueue.dead_letters
    WHERE {dead_letter_filter}
      AND failed_at <= $5
    ORDER BY failed_at, job_id
    LIMIT $6
    FOR UPDATE SKIP LOCKED
), dl AS (
    DELETE FROM jobqueue.dead_letters d USING picked WHERE d.job_id = picked.job_id
    RETURNING d.job_id
), {delete_failed_rows}
SELECT count(*) FROM dl;
