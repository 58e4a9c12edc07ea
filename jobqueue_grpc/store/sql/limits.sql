-- Flow control (issue 14; rules in domain/limits.py). A queue with a row in queue_limits is
-- claimed by the flow-controlled claim below; every other queue by lease.sql claim_jobs, which
-- knows nothing of limits. The flow-controlled claim is one transaction per queue:
--   lock_queue_limits     FOR UPDATE of the queue's row: claims of the queue on every replica
--                         take turns, so two cannot both take the last slot or token;
--   queue_running         the queue's counted leases, read after the lock (a fresh snapshot);
--   walk_limited_keys     the next keys with waiting jobs, round-robin from the cursor, with
--                         their running counts and buckets;
--   claim_jobs_limited    leases what the domain allowed per key, fairly, and counts it.
-- A counted lease carries limit_token = lease_token; the settle statements in lease.sql
-- (fragment uncount) take it off the counters when it ends, however it ends.
-- Time in the claim is read after the lock, never now(): now() is when the transaction began,
-- before it waited for the lock, so a claim that waited behind another would record a refill
-- (and its jobs' started_at) earlier than the claim before it, and the next claim would be given
-- the overlap again. The locking statements read clock_timestamp() (evaluated again once the
-- lock is granted, when the holder changed the row), the statements after them their own
-- statement_timestamp(): times move forward from one claim of a queue to the next.

-- name: limited_queues
-- What each replica caches (engine/flow.py): the queues that go through the flow-controlled claim.
SELECT queue FROM jobqueue.queue_limits;

-- name: get_queue_limits
SELECT queue, max_running, key_max_running, rate, burst, key_rate, key_burst, fair_share
FROM jobqueue.queue_limits WHERE queue = ANY($1::text[]);

-- name: set_queue_limits
-- A new bucket starts full; a changed one keeps what it held (up to the new burst) and refills
-- at the new rate from when it was last refilled.
INSERT INTO jobqueue.queue_limits AS l (queue, max_running, key_max_running, rate, burst,
                                       key_rate, key_burst, fair_share, tokens, refilled_at,
                                       updated_at)
VALUES ($1, $2::int, $3::int, $4::float8, $5::float8, $6::float8, $7::float8, $8::bool,
        coalesce($5::float8, 0), now(), now())
ON CONFLICT (queue) DO UPDATE
SET max_running = excluded.max_running, key_max_running = excluded.key_max_running,
    rate = excluded.rate, burst = excluded.burst,
    key_rate = excluded.key_rate, key_burst = excluded.key_burst,
    fair_share = excluded.fair_share,
    tokens = CASE WHEN l.rate IS NULL THEN excluded.tokens
                  ELSE least(excluded.tokens, l.tokens) END,
    refilled_at = CASE WHEN l.rate IS NULL THEN now() ELSE l.refilled_at END,
    updated_at = now();

-- name: mark_running_counted
-- Setting limits: every lease of the queue that is running now counts from here on. Locks those
-- jobs, so a settle of one of them under way finishes first and one that starts waits for this
-- transaction (and then takes it off the counters recounted below).
UPDATE jobqueue.jobs SET limit_token = lease_token
WHERE queue = $1 AND state = 'running' AND limit_token IS DISTINCT FROM lease_token;

-- name: recount_running
-- The queue's counters from its running jobs (absolute; keys no longer running go to 0).
WITH counted AS (
    SELECT '' AS key, count(*)::int AS n
    FROM jobqueue.jobs WHERE queue = $1 AND state = 'running'
    UNION ALL
    SELECT concurrency_key, count(*)::int
    FROM jobqueue.jobs WHERE queue = $1 AND state = 'running' AND concurrency_key IS NOT NULL
    GROUP BY concurrency_key
), zeroed AS (
    UPDATE jobqueue.running_counts c SET running = 0
    WHERE c.queue = $1 AND c.running <> 0 AND c.key NOT IN (SELECT key FROM counted)
)
INSERT INTO jobqueue.running_counts AS c (queue, key, running)
SELECT $1, key, n FROM counted ORDER BY key
ON CONFLICT (queue, key) DO UPDATE SET running = excluded.running;

-- name: clear_queue_limits
WITH gone AS (DELETE FROM jobqueue.queue_limits WHERE queue = $1),
     counts AS (DELETE FROM jobqueue.running_counts WHERE queue = $1)
DELETE FROM jobqueue.key_buckets WHERE queue = $1;

-- name: notify_limits
-- Every replica drops its cached list of limited queues and claims again.
SELECT pg_notify({limits_channel}, $1);

-- name: running_by_key
-- Counted leases per concurrency key of these queues, most first.
SELECT queue, key, running FROM jobqueue.running_counts
WHERE queue = ANY($1::text[]) AND key <> '' AND running > 0
ORDER BY queue, running DESC, key;

-- name: lock_queue_limits
SELECT max_running, key_max_running, rate, burst, key_rate, key_burst, fair_share,
       tokens, date_part('epoch', clock_timestamp() - refilled_at) AS elapsed, key_cursor
FROM jobqueue.queue_limits
WHERE queue = $1
FOR UPDATE;

-- name: queue_running
SELECT coalesce((SELECT running FROM jobqueue.running_counts WHERE queue = $1 AND key = ''), 0),
       EXISTS (SELECT 1 FROM jobqueue.queues p WHERE p.name = $1 AND p.paused);

-- name: walk_limited_keys
-- Up to $3 distinct keys with waiting jobs in queue $1, in key order from just after the cursor
-- $2, wrapping around once: a loose index scan (one probe of jobs_queued_by_key per key), so a
-- key's turn comes however long another key's backlog is. With each key: its counted leases and
-- its bucket as stored (tokens, seconds since refilled; NULL: no bucket yet).
WITH RECURSIVE walk(key, lap, i) AS (
    (SELECT x.key, x.lap, 1 FROM (
        (SELECT j.concurrency_key AS key, 0 AS lap FROM jobqueue.jobs j
         WHERE j.state = 'queued' AND j.queue = $1 AND j.concurrency_key > coalesce($2, '')
         ORDER BY j.concurrency_key LIMIT 1)
        UNION ALL
        (SELECT j.concurrency_key, 1 FROM jobqueue.jobs j
         WHERE j.state = 'queued' AND j.queue = $1 AND j.concurrency_key > ''
         ORDER BY j.concurrency_key LIMIT 1)
     ) x LIMIT 1)
  UNION ALL
    SELECT n.key, n.lap, w.i + 1
    FROM walk w CROSS JOIN LATERAL (
        SELECT x.key, x.lap FROM (
            (SELECT j.concurrency_key AS key, w.lap AS lap FROM jobqueue.jobs j
             WHERE j.state = 'queued' AND j.queue = $1 AND j.concurrency_key > w.key
             ORDER BY j.concurrency_key LIMIT 1)
            UNION ALL
            (SELECT j.concurrency_key, 1 FROM jobqueue.jobs j
             WHERE w.lap = 0 AND j.state = 'queued' AND j.queue = $1 AND j.concurrency_key > ''
             ORDER BY j.concurrency_key LIMIT 1)
        ) x LIMIT 1
    ) n
    WHERE w.i < $3
)
SELECT w.key, coalesce(c.running, 0) AS running, b.tokens,
       date_part('epoch', statement_timestamp() - b.refilled_at) AS elapsed
FROM walk w
LEFT JOIN jobqueue.running_counts c ON c.queue = $1 AND c.key = w.key
LEFT JOIN jobqueue.key_buckets b ON b.queue = $1 AND b.key = w.key
WHERE w.lap = 0 OR w.key <= coalesce($2, '')
ORDER BY w.i;

-- name: claim_jobs_limited
-- Leases up to $8 jobs of queue $1: up to $6[i] of key $5[i]'s (the domain's take) and up to
-- $11 without a key, round-robin: each key's (and the keyless jobs') n-th job in (priority,
-- run_at, id) order competes with the others' n-th within a priority. Job n goes to slot n
-- ($3/$4). Counts the leases (limit_token, running_counts), spends tokens ($9: the queue's bucket
-- refilled to now, $7[i]: key i's; NULL without a rate) and moves the fair-share cursor to the
-- last key that got a job ($10, the last key walked, if none did): the next claim starts after it.
-- Per kind (kind_limits): $2 the one kind of a pass, $12 the limited kinds a pass for the others
-- leaves out, $13 true keeps the queue's cursor (a kind's pass moves its kind's, count_kind_claim).
WITH keyed AS (
    SELECT c.id, c.priority, c.run_at, k.ord, k.key
    FROM unnest($5::text[], $6::int[]) WITH ORDINALITY AS k(key, take, ord)
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at FROM jobqueue.jobs j
        WHERE j.state = 'queued' AND j.queue = $1 AND j.concurrency_key = k.key
          AND ($2::text[] IS NULL OR j.kind = ANY($2::text[]))
          AND ($12::text[] IS NULL OR j.kind <> ALL($12::text[]))
          AND NOT j.cancel_requested
        ORDER BY j.priority, j.run_at, j.id
        LIMIT k.take
        FOR UPDATE SKIP LOCKED
    ) c
), keyless AS (
    SELECT j.id, j.priority, j.run_at, 0::bigint AS ord, NULL::text AS key
    FROM jobqueue.jobs j
    WHERE j.state = 'queued' AND j.queue = $1 AND j.concurrency_key IS NULL
      AND ($2::text[] IS NULL OR j.kind = ANY($2::text[]))
      AND ($12::text[] IS NULL OR j.kind <> ALL($12::text[]))
      AND NOT j.cancel_requested
    ORDER BY j.priority, j.run_at, j.id
    LIMIT $11
    FOR UPDATE SKIP LOCKED
), candidates AS (
    SELECT u.*, row_number() OVER (PARTITION BY u.key ORDER BY u.priority, u.run_at, u.id) AS rn
    FROM (SELECT * FROM keyed UNION ALL SELECT * FROM keyless) u
), picked AS (
    SELECT id AS picked_id, key, ord, gen_random_uuid() AS token,
           row_number() OVER (ORDER BY priority, rn, ord, run_at, id) AS n
    FROM candidates
    ORDER BY priority, rn, ord, run_at, id
    LIMIT $8
), leased AS (
    UPDATE jobqueue.jobs j
    SET state = 'running',
        attempt = j.attempt + 1,
        lease_token = p.token,
        limit_token = p.token,
        lease_expires_at = statement_timestamp() + j.lease_seconds * interval '1 second',
        stream_id = ($3::uuid[])[p.n],
        worker_id = ($4::text[])[p.n],
        started_at = statement_timestamp(),
        updated_at = statement_timestamp()
    FROM picked p
    WHERE j.id = p.picked_id
    RETURNING {leased_columns}, p.key AS limit_key, p.ord AS limit_ord
), counted AS (
    INSERT INTO jobqueue.running_counts AS c (queue, key, running)
    SELECT $1, k, count(*)::int
    FROM (SELECT '' AS k FROM leased
          UNION ALL SELECT limit_key FROM leased WHERE limit_key IS NOT NULL) x
    GROUP BY k ORDER BY k
    ON CONFLICT (queue, key) DO UPDATE SET running = c.running + excluded.running
), spent AS (
    INSERT INTO jobqueue.key_buckets AS b (queue, key, tokens, refilled_at)
    SELECT $1, t.key, t.tokens - count(*), statement_timestamp()
    FROM unnest($5::text[], $7::float8[]) AS t(key, tokens)
    JOIN leased l ON l.limit_key = t.key
    WHERE t.tokens IS NOT NULL
    GROUP BY t.key, t.tokens ORDER BY t.key
    ON CONFLICT (queue, key) DO UPDATE
    SET tokens = excluded.tokens, refilled_at = excluded.refilled_at
), moved AS (
    UPDATE jobqueue.queue_limits
    SET tokens = CASE WHEN $9::float8 IS NULL THEN tokens
                      ELSE $9::float8 - (SELECT count(*) FROM leased) END,
        refilled_at = CASE WHEN $9::float8 IS NULL THEN refilled_at ELSE statement_timestamp() END,
        key_cursor = CASE WHEN $13::bool THEN key_cursor ELSE coalesce(
            (SELECT limit_key FROM leased WHERE limit_key IS NOT NULL
             ORDER BY limit_ord DESC LIMIT 1), $10) END
    WHERE queue = $1
)
SELECT * FROM leased;

-- name: held_state
-- What GetJob needs to say why a waiting job of queue $1 (key $2) is held: the limits, the
-- counters and the buckets as stored (seconds since refilled).
SELECT l.max_running, l.key_max_running, l.rate, l.burst, l.key_rate, l.key_burst,
       l.fair_share, l.tokens, date_part('epoch', now() - l.refilled_at) AS elapsed,
       coalesce((SELECT running FROM jobqueue.running_counts WHERE queue = $1 AND key = ''), 0)
           AS queue_running,
       (SELECT running FROM jobqueue.running_counts WHERE queue = $1 AND key = $2) AS key_running,
       b.tokens AS key_tokens, date_part('epoch', now() - b.refilled_at) AS key_elapsed
FROM jobqueue.queue_limits l
LEFT JOIN jobqueue.key_buckets b ON b.queue = $1 AND b.key = $2
WHERE l.queue = $1;

-- Per kind (migration 0043): a queue's limits for one kind of its jobs. Both apply: a kind's pass
-- of the claim takes what its queue's limits and its kind's limits both allow.

-- name: get_kind_limits
SELECT queue, kind, max_running, key_max_running, rate, burst, key_rate, key_burst, fair_share
FROM jobqueue.kind_limits WHERE queue = ANY($1::text[]) ORDER BY queue, kind;

-- name: ensure_queue_limits
-- A queue with kind limits goes through the flow-controlled claim: it has a queue_limits row (all
-- NULL when only its kinds are limited). Locks the row either way: claims of the queue wait.
INSERT INTO jobqueue.queue_limits AS l (queue) VALUES ($1)
ON CONFLICT (queue) DO UPDATE SET updated_at = now();

-- name: set_kind_limits
-- The buckets as in set_queue_limits.
INSERT INTO jobqueue.kind_limits AS l (queue, kind, max_running, key_max_running, rate, burst,
                                      key_rate, key_burst, fair_share, tokens, refilled_at,
                                      updated_at)
VALUES ($1, $2, $3::int, $4::int, $5::float8, $6::float8, $7::float8, $8::float8, $9::bool,
        coalesce($6::float8, 0), now(), now())
ON CONFLICT (queue, kind) DO UPDATE
SET max_running = excluded.max_running, key_max_running = excluded.key_max_running,
    rate = excluded.rate, burst = excluded.burst,
    key_rate = excluded.key_rate, key_burst = excluded.key_burst,
    fair_share = excluded.fair_share,
    tokens = CASE WHEN l.rate IS NULL THEN excluded.tokens
                  ELSE least(excluded.tokens, l.tokens) END,
    refilled_at = CASE WHEN l.rate IS NULL THEN now() ELSE l.refilled_at END,
    updated_at = now();

-- name: clear_kind_limits
WITH gone AS (DELETE FROM jobqueue.kind_limits WHERE queue = $1 AND kind = $2)
DELETE FROM jobqueue.kind_key_buckets WHERE queue = $1 AND kind = $2;

-- name: queue_limits_unused
-- Whether a queue's row in queue_limits holds nothing any more (no limit of its own, no kind's).
SELECT NOT EXISTS (SELECT 1 FROM jobqueue.kind_limits WHERE queue = $1)
       AND NOT EXISTS (
           SELECT 1 FROM jobqueue.queue_limits
           WHERE queue = $1 AND (fair_share OR max_running IS NOT NULL
                                 OR key_max_running IS NOT NULL OR rate IS NOT NULL
                                 OR key_rate IS NOT NULL));

-- name: unset_queue_limits
-- The queue's own limits cleared while some of its kinds keep theirs.
UPDATE jobqueue.queue_limits
SET max_running = NULL, key_max_running = NULL, rate = NULL, burst = NULL, key_rate = NULL,
    key_burst = NULL, fair_share = false, tokens = 0, updated_at = now()
WHERE queue = $1;

-- name: clear_all_kinds
WITH gone AS (DELETE FROM jobqueue.kind_limits WHERE queue = $1),
     counts AS (DELETE FROM jobqueue.kind_running_counts WHERE queue = $1)
DELETE FROM jobqueue.kind_key_buckets WHERE queue = $1;

-- name: recount_kind_running
-- The queue's per-kind counters from its running jobs (absolute), as recount_running.
WITH counted AS (
    SELECT kind, '' AS key, count(*)::int AS n
    FROM jobqueue.jobs WHERE queue = $1 AND state = 'running'
    GROUP BY kind
    UNION ALL
    SELECT kind, concurrency_key, count(*)::int
    FROM jobqueue.jobs WHERE queue = $1 AND state = 'running' AND concurrency_key IS NOT NULL
    GROUP BY kind, concurrency_key
), zeroed AS (
    UPDATE jobqueue.kind_running_counts c SET running = 0
    WHERE c.queue = $1 AND c.running <> 0
      AND (c.kind, c.key) NOT IN (SELECT kind, key FROM counted)
)
INSERT INTO jobqueue.kind_running_counts AS c (queue, kind, key, running)
SELECT $1, kind, key, n FROM counted ORDER BY kind, key
ON CONFLICT (queue, kind, key) DO UPDATE SET running = excluded.running;

-- name: lock_kind_limits
-- The kind limits of a queue whose queue_limits row this transaction holds, with each kind's
-- counted leases and bucket as stored.
SELECT l.kind, l.max_running, l.key_max_running, l.rate, l.burst, l.key_rate, l.key_burst,
       l.fair_share, l.tokens, date_part('epoch', clock_timestamp() - l.refilled_at) AS elapsed,
       l.key_cursor,
       coalesce((SELECT running FROM jobqueue.kind_running_counts c
                 WHERE c.queue = $1 AND c.kind = l.kind AND c.key = ''), 0) AS running
FROM jobqueue.kind_limits l
WHERE l.queue = $1
ORDER BY l.kind;

-- name: walk_kind_keys
-- walk_limited_keys for the waiting jobs of kind $4 only, with each key's counted leases and
-- bucket for the queue (running, tokens, elapsed) and for the kind (kind_*).
WITH RECURSIVE walk(key, lap, i) AS (
    (SELECT x.key, x.lap, 1 FROM (
        (SELECT j.concurrency_key AS key, 0 AS lap FROM jobqueue.jobs j
         WHERE j.state = 'queued' AND j.queue = $1 AND j.kind = $4
           AND j.concurrency_key > coalesce($2, '')
         ORDER BY j.concurrency_key LIMIT 1)
        UNION ALL
        (SELECT j.concurrency_key, 1 FROM jobqueue.jobs j
         WHERE j.state = 'queued' AND j.queue = $1 AND j.kind = $4 AND j.concurrency_key > ''
         ORDER BY j.concurrency_key LIMIT 1)
     ) x LIMIT 1)
  UNION ALL
    SELECT n.key, n.lap, w.i + 1
    FROM walk w CROSS JOIN LATERAL (
        SELECT x.key, x.lap FROM (
            (SELECT j.concurrency_key AS key, w.lap AS lap FROM jobqueue.jobs j
             WHERE j.state = 'queued' AND j.queue = $1 AND j.kind = $4
               AND j.concurrency_key > w.key
             ORDER BY j.concurrency_key LIMIT 1)
            UNION ALL
            (SELECT j.concurrency_key, 1 FROM jobqueue.jobs j
             WHERE w.lap = 0 AND j.state = 'queued' AND j.queue = $1 AND j.kind = $4
               AND j.concurrency_key > ''
             ORDER BY j.concurrency_key LIMIT 1)
        ) x LIMIT 1
    ) n
    WHERE w.i < $3
)
SELECT w.key, coalesce(c.running, 0) AS running, b.tokens,
       date_part('epoch', statement_timestamp() - b.refilled_at) AS elapsed,
       coalesce(kc.running, 0) AS kind_running, kb.tokens AS kind_tokens,
       date_part('epoch', statement_timestamp() - kb.refilled_at) AS kind_elapsed
FROM walk w
LEFT JOIN jobqueue.running_counts c ON c.queue = $1 AND c.key = w.key
LEFT JOIN jobqueue.key_buckets b ON b.queue = $1 AND b.key = w.key
LEFT JOIN jobqueue.kind_running_counts kc ON kc.queue = $1 AND kc.kind = $4 AND kc.key = w.key
LEFT JOIN jobqueue.kind_key_buckets kb ON kb.queue = $1 AND kb.kind = $4 AND kb.key = w.key
WHERE w.lap = 0 OR w.key <= coalesce($2, '')
ORDER BY w.i;

-- name: count_kind_claim
-- After a pass of claim_jobs_limited: counts the leases ($2 kinds, $3 keys, NULL: no key) per
-- kind and key. For a kind's pass ($4 the kind; NULL for the others' pass) also spends its
-- buckets ($5 the kind's refilled to now; $6[i] key $7[i]'s; NULL without a rate) and moves its
-- fair-share cursor ($8: the last key that got a job, else the last key walked).
WITH leased AS (
    SELECT * FROM unnest($2::text[], $3::text[]) AS l(kind, key)
), counted AS (
    INSERT INTO jobqueue.kind_running_counts AS c (queue, kind, key, running)
    SELECT $1, x.kind, x.key, count(*)::int
    FROM (SELECT kind, '' AS key FROM leased
          UNION ALL SELECT kind, key FROM leased WHERE key IS NOT NULL) x
    GROUP BY x.kind, x.key ORDER BY x.kind, x.key
    ON CONFLICT (queue, kind, key) DO UPDATE SET running = c.running + excluded.running
), spent AS (
    INSERT INTO jobqueue.kind_key_buckets AS b (queue, kind, key, tokens, refilled_at)
    SELECT $1, $4, t.key, t.tokens - count(*), statement_timestamp()
    FROM unnest($7::text[], $6::float8[]) AS t(key, tokens)
    JOIN leased l ON l.key = t.key
    WHERE $4::text IS NOT NULL AND t.tokens IS NOT NULL
    GROUP BY t.key, t.tokens ORDER BY t.key
    ON CONFLICT (queue, kind, key) DO UPDATE
    SET tokens = excluded.tokens, refilled_at = excluded.refilled_at
)
UPDATE jobqueue.kind_limits
SET tokens = CASE WHEN $5::float8 IS NULL THEN tokens
                  ELSE $5::float8 - (SELECT count(*) FROM leased) END,
    refilled_at = CASE WHEN $5::float8 IS NULL THEN refilled_at ELSE statement_timestamp() END,
    key_cursor = $8
WHERE queue = $1 AND kind = $4;

-- name: kind_held_state
-- held_state for the kind $3 of a waiting job of queue $1 (key $2), if the kind has limits.
SELECT l.max_running, l.key_max_running, l.rate, l.burst, l.key_rate, l.key_burst,
       l.fair_share, l.tokens, date_part('epoch', now() - l.refilled_at) AS elapsed,
       coalesce((SELECT running FROM jobqueue.kind_running_counts
                 WHERE queue = $1 AND kind = $3 AND key = ''), 0) AS queue_running,
       (SELECT running FROM jobqueue.kind_running_counts
        WHERE queue = $1 AND kind = $3 AND key = $2) AS key_running,
       b.tokens AS key_tokens, date_part('epoch', now() - b.refilled_at) AS key_elapsed
FROM jobqueue.kind_limits l
LEFT JOIN jobqueue.kind_key_buckets b ON b.queue = $1 AND b.kind = $3 AND b.key = $2
WHERE l.queue = $1 AND l.kind = $3;
