-- QueueService queries. A queue exists when it has jobs or a row in jobqueue.queues (an operator
-- may pause a queue before its first job); nothing here knows any queue by name.

-- name: list_queues
-- Every queue, live counts by state (NULL: none), paused flag; ordered by name.
WITH counts AS (
    SELECT queue, {state_counts}
    FROM jobqueue.jobs
    GROUP BY queue
), named AS (  -- queues with settings: paused, or with limits (flow control)
    SELECT name FROM jobqueue.queues UNION SELECT queue FROM jobqueue.queue_limits
)
SELECT coalesce(c.queue, n.name) AS name,
       coalesce(s.paused, false) AS paused, s.paused_at, c.*
FROM counts c FULL OUTER JOIN named n ON n.name = c.queue
LEFT JOIN jobqueue.queues s ON s.name = coalesce(c.queue, n.name)
ORDER BY 1;

-- name: get_queue
-- One queue; no row at all when it has neither jobs nor settings (a pause or limits).
WITH counts AS (
    SELECT count(*) AS total, {state_counts}
    FROM jobqueue.jobs
    WHERE queue = $1
)
SELECT $1::text AS name,
       coalesce(s.paused, false) AS paused, s.paused_at, c.*
FROM counts c LEFT JOIN jobqueue.queues s ON s.name = $1
WHERE c.total > 0 OR s.name IS NOT NULL
   OR EXISTS (SELECT 1 FROM jobqueue.queue_limits l WHERE l.queue = $1);

-- name: pause_queue
-- The claim skips queues paused here, on every replica at once. Pausing twice keeps the first time.
INSERT INTO jobqueue.queues (name, paused, paused_at, updated_at)
VALUES ($1, true, now(), now())
ON CONFLICT (name) DO UPDATE
SET paused = true,
    paused_at = coalesce(jobqueue.queues.paused_at, now()),
    updated_at = now();

-- name: resume_queue
-- Returns the queue name when a settings row existed (so the caller knows the queue is real).
UPDATE jobqueue.queues
SET paused = false, paused_at = NULL, updated_at = now()
WHERE name = $1
RETURNING name;
