-- JobService queries. Every statement the server runs lives under store/sql/, one name each.
-- `{job_columns}` is replaced with the column list every Job is read with.

-- name: insert_jobs
-- Inserts many jobs in one statement (atomic on its own: no BEGIN/COMMIT round trips); an
-- idempotency key that already names a job inserts nothing (and a key repeated inside one batch
-- inserts its first job only). Dispatchers on every replica are woken for the queues that got
-- jobs ready now, in the same statement, when $12 says another replica listens (store/notify.py
-- Peers; this one is woken in-process).
-- Hand-off: a job given a (stream, worker) in $13/$14 is inserted already leased to that stream,
-- as a claim would lease it (attempt 1, a token, the expiry), unless it is not due yet or its
-- queue is paused, in which case it is inserted as usual. The dispatcher hands a job off only to
-- a stream whose last claim found nothing waiting (engine/handoff.py), so the job
-- is the one the next claim would pick; this saves that claim and its round trip. The rows come
-- back with {leased_columns}' epoch times too, for the dispatcher to push the leased ones.
-- $15-$17 (issue 16): metadata (JSON text or NULL), traceparent, tracestate, per job; $18 (issue
-- 14): the concurrency key, per job.
WITH ins AS (
INSERT INTO jobqueue.jobs AS j (id, queue, kind, payload, priority, state, max_attempts, run_at,
                                idempotency_key, lease_seconds, backoff_base, backoff_cap,
                                attempt, lease_token, lease_expires_at, stream_id, worker_id,
                                started_at,
                                metadata, traceparent, tracestate, concurrency_key)
SELECT t.id, t.queue, t.kind, t.payload::jsonb, t.priority,
       CASE WHEN t.run_at > now() THEN 'scheduled' WHEN h.go THEN 'running' ELSE 'queued' END,
       t.max_attempts, coalesce(t.run_at, now()), t.idempotency_key,
       t.lease_seconds, t.backoff_base, t.backoff_cap,
       CASE WHEN h.go THEN 1 ELSE 0 END,
       CASE WHEN h.go THEN gen_random_uuid() END,
       CASE WHEN h.go THEN now() + t.lease_seconds * interval '1 second' END,
       CASE WHEN h.go THEN t.stream_id END,
       CASE WHEN h.go THEN t.worker_id END,
       CASE WHEN h.go THEN now() END,
       t.metadata::jsonb, t.traceparent, t.tracestate, t.concurrency_key
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[],
            $7::timestamptz[], $8::text[], $9::float8[], $10::float8[], $11::float8[],
            $13::uuid[], $14::text[],
            $15::text[], $16::text[], $17::text[], $18::text[])
     AS t(id, queue, kind, payload, priority, max_attempts, run_at, idempotency_key,
          lease_seconds, backoff_base, backoff_cap, stream_id, worker_id,
          metadata, traceparent, tracestate, concurrency_key)
CROSS JOIN LATERAL (
    SELECT t.stream_id IS NOT NULL AND coalesce(t.run_at <= now(), true)
           AND NOT EXISTS (SELECT 1 FROM jobqueue.queues p WHERE p.name = t.queue AND p.paused)
           AS go
) h
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING {job_columns}, {lease_epochs}
), woken AS (
    SELECT count(pg_notify({jobs_channel}, queue)) AS n
    FROM (SELECT DISTINCT queue FROM ins WHERE state = 'queued' AND $12::bool) AS ready
)
SELECT ins.* FROM ins, woken;

-- fragment: batch_insert
-- The body of insert_job_batch and its keyless twin, up to the conflict clause.
-- $1 is the ids as one uuid[] literal. Every other column comes either as an array ($2, $4, ...)
-- or, when all the jobs have the same value, as that value ($3, $5, ...) and a NULL array, which
-- unnest pads with NULLs: a batch sends each value that varies, and each one that does not once.
-- $23-$28 (issue 16): metadata, traceparent, tracestate, and $29-$30 (issue 14): the concurrency
-- key, in the same two forms.
INSERT INTO jobqueue.jobs (id, queue, kind, payload, priority, state, max_attempts, run_at,
                           idempotency_key, lease_seconds, backoff_base, backoff_cap,
                           metadata, traceparent, tracestate, concurrency_key)
SELECT t.id, coalesce(t.queue, $3::text), coalesce(t.kind, $5::text),
       coalesce(t.payload, $7::text)::jsonb, coalesce(t.priority, $9::int),
       CASE WHEN coalesce(t.run_at, $13::timestamptz) > now() THEN 'scheduled' ELSE 'queued' END,
       coalesce(t.max_attempts, $11::int), coalesce(t.run_at, $13::timestamptz, now()),
       coalesce(t.idempotency_key, $15::text), coalesce(t.lease_seconds, $17::float8),
       coalesce(t.backoff_base, $19::float8), coalesce(t.backoff_cap, $21::float8),
       coalesce(t.metadata, $24::text)::jsonb, coalesce(t.traceparent, $26::text),
       coalesce(t.tracestate, $28::text), coalesce(t.concurrency_key, $30::text)
FROM unnest($1::text::uuid[], $2::text[], $4::text[], $6::text[], $8::int[], $10::int[],
            $12::timestamptz[], $14::text[], $16::float8[], $18::float8[], $20::float8[],
            $23::text[], $25::text[], $27::text[], $29::text[])
     AS t(id, queue, kind, payload, priority, max_attempts, run_at, idempotency_key,
          lease_seconds, backoff_base, backoff_cap, metadata, traceparent, tracestate,
          concurrency_key)

-- fragment: batch_answer
-- What insert_job_batch and its twin return: one row per (queue, state) of the jobs inserted,
-- with the transaction's now() and the ids of the inserted jobs that carry an idempotency key.
-- $22 is insert_jobs' $12: NOTIFY other replicas or not.
RETURNING id, queue, state, idempotency_key
), woken AS (
    SELECT count(pg_notify({jobs_channel}, queue)) AS n
    FROM (SELECT DISTINCT queue FROM ins WHERE state = 'queued' AND $22::bool) AS ready
)
SELECT ins.queue, ins.state, count(*) AS n, now() AS at,
       array_agg(ins.id::text) FILTER (WHERE ins.idempotency_key IS NOT NULL) AS keyed_ids
FROM ins, woken
GROUP BY ins.queue, ins.state;

-- name: insert_job_batch
-- insert_jobs for EnqueueBatch, which builds its answer from the values it sent: the same insert
-- and wake-up, but what comes back is one row per (queue, state) of the jobs inserted (see
-- batch_answer). The caller holds every other value. Nothing inserted: no rows.
WITH ins AS (
{batch_insert}
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
{batch_answer}

-- name: insert_job_batch_without_keys
-- insert_job_batch for a batch in which no job has an idempotency key ($14 and $15 NULL), so no
-- conflict is possible: without ON CONFLICT, PostgreSQL inserts each row plainly instead of
-- speculatively (no pre-check of the arbiter index, no confirm record: a quarter fewer WAL
-- records).
WITH ins AS (
{batch_insert}
{batch_answer}

-- name: jobs_by_idempotency_keys
SELECT {job_columns} FROM jobqueue.jobs WHERE idempotency_key = ANY($1::text[]);

-- name: announce_listener
-- A dispatcher that has just started listening tells the others, which then NOTIFY (Peers).
SELECT pg_notify({replicas_channel}, '');

-- name: other_listeners
-- How many other replicas' dispatchers listen on this database ($1: their application_name,
-- which pg_stat_activity shows to every role).
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid();

-- name: notify_jobs_available
-- Wakes dispatchers on every replica; the payload is the queue name.
SELECT pg_notify({jobs_channel}, q) FROM unnest($1::text[]) AS q;

-- name: publish_enqueue_defaults
-- A server's enqueue settings, for jobqueue.enqueue() (migration 0030); unchanged: no write.
UPDATE jobqueue.enqueue_defaults
SET payload_max_bytes = $1, default_max_attempts = $2, lease_seconds = $3
WHERE (payload_max_bytes, default_max_attempts, lease_seconds) IS DISTINCT FROM ($1, $2, $3);

-- name: get_job
SELECT {job_columns} FROM jobqueue.jobs WHERE id = $1;

-- name: list_jobs
-- Newest first. Job ids are time-ordered (UUIDv7), so the primary key gives the order and the
-- keyset cursor ($4, the last id of the previous page) without an index of its own.
-- $6: a metadata filter (JSON object; the job's metadata must hold every pair), via jobs_metadata.
-- $7: only jobs created before it.
SELECT {job_columns} FROM jobqueue.jobs
WHERE ($1::text IS NULL OR queue = $1)
  AND ($2::text IS NULL OR kind = $2)
  AND ($3::text IS NULL OR state = $3)
  AND ($6::jsonb IS NULL OR metadata @> $6::jsonb)
  AND id < $4::uuid
  AND ($7::timestamptz IS NULL OR created_at < $7)
ORDER BY id DESC
LIMIT $5;

-- name: lock_job_state
SELECT state FROM jobqueue.jobs WHERE id = $1 FOR UPDATE;

-- name: cancel_waiting_job
UPDATE jobqueue.jobs
SET state = 'cancelled', finished_at = now(), updated_at = now()
WHERE id = $1
RETURNING {job_columns};

-- name: request_cancel
-- A running job: flag it and tell the replica holding its stream to push a cancel notice.
WITH upd AS (
    UPDATE jobqueue.jobs
    SET cancel_requested = true, updated_at = now()
    WHERE id = $1
    RETURNING {job_columns}
), notified AS (
    SELECT pg_notify({cancel_channel}, upd.id::text || ' ' || coalesce(upd.stream_id::text, ''))
    FROM upd
)
SELECT upd.* FROM upd, notified;

-- fragment: unique_key_of
-- A unique job's stored key: its key, and with a period '@' and the start of its window (epoch
-- seconds) of its run_at, or of now() when it has none. From columns u_key, u_period, u_run_at.
CASE WHEN u_key IS NULL THEN NULL
     WHEN u_period IS NULL THEN u_key
     ELSE u_key || '@' || (floor(date_part('epoch', coalesce(u_run_at, now())) / u_period)
                           * u_period)::bigint
END

-- name: insert_jobs_unique
-- insert_jobs for jobs that may be unique (EnqueueRequest.unique) and for schedule ticks: no
-- hand-off, and ON CONFLICT without a target, so that the idempotency key's index and the
-- unique key's (jobs_unique_key: a row is in it while its state is one of its unique_states)
-- both refuse a duplicate, whichever replica inserts it and whenever. Run inside a transaction:
-- jobs_by_unique_keys then computes the same windows (the same now()). $12: NOTIFY or not.
-- $13-$15: the unique key, states and period; $16-$18 (issue 16): metadata (JSON text or NULL),
-- traceparent, tracestate; $19 (issue 14): the concurrency key; per job.
WITH t AS (
    SELECT t.*, {unique_key_of} AS unique_key
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[],
                $7::timestamptz[], $8::text[], $9::float8[], $10::float8[], $11::float8[],
                $13::text[], $14::text[], $15::float8[],
                $16::text[], $17::text[], $18::text[], $19::text[])
         AS t(id, queue, kind, payload, priority, max_attempts, u_run_at, idempotency_key,
              lease_seconds, backoff_base, backoff_cap, u_key, u_states, u_period,
              metadata, traceparent, tracestate, concurrency_key)
), ins AS (
INSERT INTO jobqueue.jobs (id, queue, kind, payload, priority, state, max_attempts, run_at,
                           idempotency_key, lease_seconds, backoff_base, backoff_cap,
                           unique_key, unique_states, metadata, traceparent, tracestate,
                           concurrency_key)
SELECT t.id, t.queue, t.kind, t.payload::jsonb, t.priority,
       CASE WHEN t.u_run_at > now() THEN 'scheduled' ELSE 'queued' END,
       t.max_attempts, coalesce(t.u_run_at, now()), t.idempotency_key,
       t.lease_seconds, t.backoff_base, t.backoff_cap,
       t.unique_key, string_to_array(t.u_states, ','),
       t.metadata::jsonb, t.traceparent, t.tracestate, t.concurrency_key
FROM t
ON CONFLICT DO NOTHING
RETURNING {job_columns}
), woken AS (
    SELECT count(pg_notify({jobs_channel}, queue)) AS n
    FROM (SELECT DISTINCT queue FROM ins WHERE state = 'queued' AND $12::bool) AS ready
)
SELECT ins.* FROM ins, woken;

-- name: jobs_by_unique_keys
-- The job that holds each unique key (in one of its unique_states), the keys computed as
-- insert_jobs_unique did; the (1-based) position of the key asked for comes last.
WITH t AS (
    SELECT {unique_key_of} AS u_wanted, u_n
    FROM unnest($1::text[], $2::float8[], $3::timestamptz[]) WITH ORDINALITY
         AS t(u_key, u_period, u_run_at, u_n)
)
SELECT {job_columns}, t.u_n
FROM t JOIN jobqueue.jobs j ON j.unique_key = t.u_wanted AND j.state = ANY (j.unique_states);

-- fragment: cancel_filter
-- CancelJobs' filters: queue $1, kind $2, states $3 (those given that a cancel applies to),
-- created before $4. A running job already told to stop is not asked again.
($1::text IS NULL OR queue = $1)
  AND ($2::text IS NULL OR kind = $2)
  AND state = ANY ($3::text[])
  AND ($4::timestamptz IS NULL OR created_at < $4)
  AND NOT (state = 'running' AND cancel_requested)

-- name: count_cancellable
SELECT count(*) FROM jobqueue.jobs WHERE {cancel_filter};

-- name: cancel_jobs_chunk
-- One chunk of CancelJobs: up to $5 matching jobs, locked (skipping any another transaction
-- holds: the next chunk takes them), oldest first. Waiting ones ($6: the states Event.CANCEL
-- applies to) are cancelled as cancel_waiting_job does; running ones ($7: Event.REQUEST_CANCEL)
-- flagged and their streams told as request_cancel does. One row per (what, queue, kind).
WITH picked AS (
    SELECT id, state FROM jobqueue.jobs
    WHERE {cancel_filter}
    ORDER BY id
    LIMIT $5
    FOR UPDATE SKIP LOCKED
), waiting AS (
    UPDATE jobqueue.jobs j
    SET state = 'cancelled', finished_at = now(), updated_at = now()
    FROM picked
    WHERE j.id = picked.id AND picked.state = ANY ($6::text[])
    RETURNING j.queue, j.kind
), running AS (
    UPDATE jobqueue.jobs j
    SET cancel_requested = true, updated_at = now()
    FROM picked
    WHERE j.id = picked.id AND picked.state = ANY ($7::text[])
    RETURNING j.id, j.stream_id, j.queue, j.kind
), notified AS (
    SELECT count(pg_notify({cancel_channel}, id::text || ' ' || coalesce(stream_id::text, '')))
           AS n
    FROM running
)
SELECT 'cancelled' AS what, queue, kind, count(*) AS n FROM waiting GROUP BY queue, kind
UNION ALL
SELECT 'requested', '', '', notified.n FROM notified WHERE notified.n > 0;
