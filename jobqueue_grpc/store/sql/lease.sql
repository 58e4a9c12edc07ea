-- WorkerService.Lease: claim, settle, extend, expire. Every outcome is fenced by lease_token:
-- a token that is not the job's current lease matches no row and changes nothing.
--
-- A job has a lease_token exactly while it is 'running' (the claim sets one; every way out of
-- 'running' clears it), so the token alone fences. Statements that touch a batch of jobs by id
-- leave `state = 'running'` out on purpose: given it, the planner may read the batch through
-- the jobs_running index, scanning every entry in it (dead ones of settled jobs too) per batch.

-- name: claim_jobs
-- One claim serves many streams: $3/$4 hold one (stream_id, worker_id) slot per job wanted,
-- interleaved across streams; the n-th job picked goes to the n-th slot.
-- Each unpaused queue is read in index order (priority, run_at, id) and stops at the limit, so a
-- claim costs the same with ten jobs waiting or a million; the queues' heads are then merged.
WITH open_queues AS (
    SELECT qn AS name
    FROM unnest($1::text[]) AS qn
    WHERE NOT EXISTS (SELECT 1 FROM jobqueue.queues p WHERE p.name = qn AND p.paused)
), candidates AS (
    SELECT c.id, c.priority, c.run_at
    FROM open_queues o
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at
        FROM jobqueue.jobs j
        WHERE j.state = 'queued'
          AND j.queue = o.name
          AND ($2::text[] IS NULL OR j.kind = ANY($2::text[]))
          AND NOT j.cancel_requested
        ORDER BY j.priority, j.run_at, j.id
        LIMIT cardinality($3::uuid[])
        FOR UPDATE SKIP LOCKED
    ) c
), picked AS (
    SELECT id AS picked_id, row_number() OVER (ORDER BY priority, run_at, id) AS n
    FROM candidates
    ORDER BY priority, run_at, id
    LIMIT cardinality($3::uuid[])
)
UPDATE jobqueue.jobs j
SET state = 'running',
    attempt = j.attempt + 1,
    lease_token = gen_random_uuid(),
    lease_expires_at = now() + j.lease_seconds * interval '1 second',
    stream_id = ($3::uuid[])[p.n],
    worker_id = ($4::text[])[p.n],
    started_at = now(),
    updated_at = now()
FROM picked p
WHERE j.id = p.picked_id
RETURNING {leased_columns};

-- name: unlease_handed_off_jobs
-- A hand-off whose insert may have committed although its caller saw an error (a statement after
-- it failed, or the connection dropped after the commit): its jobs were never pushed, so they go
-- back to the queue as if never leased, without spending an attempt. Nobody else can hold them
-- (running, attempt 1, on the stream they were inserted for); if the insert did not commit, this
-- matches nothing.
UPDATE jobqueue.jobs
SET state = 'queued', attempt = 0, lease_token = NULL, lease_expires_at = NULL,
    stream_id = NULL, worker_id = NULL, started_at = NULL, updated_at = now()
FROM unnest($1::uuid[], $2::uuid[]) AS t(id, stream_id)
WHERE jobqueue.jobs.id = t.id AND jobqueue.jobs.stream_id = t.stream_id
  AND jobqueue.jobs.state = 'running' AND jobqueue.jobs.attempt = 1
RETURNING jobqueue.jobs.id;

-- name: promote_due_jobs
-- The scheduler: parked jobs whose time has come become claimable, and their queues' dispatchers
-- (on every replica) are woken. Returns how many jobs each queue got.
WITH due AS (
    SELECT id FROM jobqueue.jobs
    WHERE state IN ('scheduled', 'retrying') AND run_at <= now()
    ORDER BY run_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE jobqueue.jobs j SET state = 'queued', updated_at = now()
    FROM due WHERE j.id = due.id
    RETURNING j.queue
)
SELECT queue, count(*) AS n, pg_notify({jobs_channel}, queue) FROM upd GROUP BY queue;

-- name: next_parked_due
-- When the scheduler next has work (NULL: nothing parked).
SELECT min(run_at) FROM jobqueue.jobs WHERE state IN ('scheduled', 'retrying');

-- fragment: uncount
-- The settle statements' tail (flow control, store/sql/limits.sql): leases the flow-controlled
-- claim counted (limit_token is the ending lease's token) come off their queue's and key's
-- running counters (and their kind's), and every replica is woken to claim in the room they leave. It touches
-- nothing for a lease of a queue without limits: `upd` has `counted` false for all of them.
-- INSERT .. ON CONFLICT adds to the row as it is now (not as this statement's snapshot saw it),
-- and in (queue, key) order, the order the claim takes the same rows in.
uncounted AS (
    INSERT INTO jobqueue.running_counts AS c (queue, key, running)
    SELECT u.queue, k.key, -count(*)::int
    FROM upd u CROSS JOIN LATERAL (VALUES (''), (u.concurrency_key)) AS k(key)
    WHERE u.counted AND k.key IS NOT NULL
    GROUP BY u.queue, k.key
    ORDER BY u.queue, k.key
    ON CONFLICT (queue, key) DO UPDATE SET running = c.running + excluded.running
    RETURNING c.queue, c.key
), kind_uncounted AS (
    -- and off their kind's counters (migration 0043), after the queue's, as the claim counts
    INSERT INTO jobqueue.kind_running_counts AS c (queue, kind, key, running)
    SELECT u.queue, u.kind, k.key, -count(*)::int
    FROM upd u CROSS JOIN LATERAL (VALUES (''), (u.concurrency_key)) AS k(key)
    WHERE u.counted AND k.key IS NOT NULL
    GROUP BY u.queue, u.kind, k.key
    ORDER BY u.queue, u.kind, k.key
    ON CONFLICT (queue, kind, key) DO UPDATE SET running = c.running + excluded.running
), room AS (
    SELECT count(pg_notify({jobs_channel}, queue)) AS n FROM uncounted WHERE key = ''
)

-- name: complete_jobs
WITH upd AS (
    UPDATE jobqueue.jobs j
    SET state = 'succeeded', result = t.result::jsonb, finished_at = now(), updated_at = now(),
        lease_token = NULL, lease_expires_at = NULL, stream_id = NULL
    FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS t(id, token, result)
    WHERE j.id = t.id AND j.lease_token = t.token
    RETURNING j.id, j.queue, j.kind, j.concurrency_key, j.limit_token = t.token AS counted
), {uncount}
SELECT upd.id FROM upd, room;

-- name: cancel_running_jobs
-- The worker stopped these after a cancel notice (or chose to).
WITH upd AS (
    UPDATE jobqueue.jobs j
    SET state = 'cancelled', finished_at = now(), updated_at = now(),
        lease_token = NULL, lease_expires_at = NULL, stream_id = NULL
    FROM unnest($1::uuid[], $2::uuid[]) AS t(id, token)
    WHERE j.id = t.id AND j.lease_token = t.token
    RETURNING j.id, j.queue, j.kind, j.concurrency_key, j.limit_token = t.token AS counted
), {uncount}
SELECT upd.id FROM upd, room;

-- name: fail_jobs
-- Ends attempts: $3 is the next state the domain decided ('retrying' after $4 seconds, or
-- 'failed'); a job whose cancel was requested ends 'cancelled' instead. A job that fails for good
-- is copied into the dead-letter store in this same statement, with every attempt's error.
-- The domain's rule (domain/states.py next_state: a requested cancel wins) is the first CASE.
WITH t AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::float8[], $5::text[])
        AS t(id, token, next_state, delay, error)
), upd AS (
    UPDATE jobqueue.jobs j
    SET state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE t.next_state END,
        run_at = CASE WHEN t.next_state = 'retrying'
                      THEN now() + t.delay * interval '1 second' ELSE j.run_at END,
        last_sleep = CASE WHEN t.next_state = 'retrying' THEN t.delay ELSE j.last_sleep END,
        errors = j.errors || jsonb_build_array(
            t.error::jsonb || jsonb_build_object('attempt', j.attempt, 'failed_at', now())),
        finished_at = CASE WHEN j.cancel_requested OR t.next_state = 'failed'
                           THEN now() END,
        lease_token = NULL, lease_expires_at = NULL, stream_id = NULL,
        updated_at = now()
    FROM t
    WHERE j.id = t.id AND j.lease_token = t.token
    RETURNING j.*, j.limit_token = t.token AS counted
), dead AS (
    INSERT INTO jobqueue.dead_letters (job_id, queue, kind, payload, priority, attempts,
                                       max_attempts, errors, idempotency_key, lease_seconds,
                                       backoff_base, backoff_cap, created_at, failed_at,
                                       concurrency_key)
    SELECT id, queue, kind, payload, priority, attempt, max_attempts, errors, idempotency_key,
           lease_seconds, backoff_base, backoff_cap, created_at, now(), concurrency_key
    FROM upd WHERE upd.state = 'failed'
    ON CONFLICT (job_id) DO UPDATE
    SET attempts = excluded.attempts, errors = excluded.errors, failed_at = excluded.failed_at
), {uncount}
SELECT upd.id, upd.state, upd.queue, upd.kind FROM upd, room;

-- name: extend_leases
UPDATE jobqueue.jobs j
SET lease_expires_at = now() + coalesce(t.secs, j.lease_seconds) * interval '1 second',
    updated_at = now()
FROM unnest($1::uuid[], $2::uuid[], $3::float8[]) AS t(id, token, secs)
WHERE j.id = t.id AND j.lease_token = t.token
RETURNING j.id, j.lease_expires_at, j.cancel_requested;

-- name: set_progress
UPDATE jobqueue.jobs
SET progress = $3::jsonb, updated_at = now()
WHERE id = $1 AND lease_token = $2
RETURNING id;

-- name: lock_expired_leases
-- The reaper's pick: leases past expiry, on any replica; SKIP LOCKED so replicas split the work.
-- Both lock statements return what domain/outcomes.py Attempt holds, in its order.
SELECT id, lease_token, attempt, max_attempts, backoff_base, backoff_cap, last_sleep
FROM jobqueue.jobs
WHERE state = 'running' AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: lock_leases
-- These leases, where still current (for release when their stream ends). No SKIP LOCKED: a row
-- held by a concurrent CancelJob must still be released, just after it; ordered by id so two
-- releases cannot deadlock.
SELECT j.id, j.lease_token, j.attempt, j.max_attempts, j.backoff_base, j.backoff_cap,
       j.last_sleep
FROM jobqueue.jobs j
JOIN unnest($1::uuid[], $2::uuid[]) AS t(id, token) ON j.id = t.id AND j.lease_token = t.token
ORDER BY j.id
FOR UPDATE OF j;
