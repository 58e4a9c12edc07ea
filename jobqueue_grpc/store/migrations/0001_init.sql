-- The jobs table, the dead-letter store and queue settings.
CREATE TABLE jobqueue.jobs (
    id                uuid PRIMARY KEY,
    queue             text NOT NULL,
    kind              text NOT NULL,
    payload           jsonb NOT NULL,
    priority          integer NOT NULL DEFAULT 0,
    state             text NOT NULL CHECK (state IN
                        ('queued', 'scheduled', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')),
    attempt           integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL CHECK (max_attempts >= 1),
    run_at            timestamptz NOT NULL DEFAULT now(),
    idempotency_key   text,
    lease_seconds     double precision NOT NULL,
    backoff_base      double precision,
    backoff_cap       double precision,
    last_sleep        double precision,
    lease_token       uuid,
    lease_expires_at  timestamptz,
    worker_id         text,
    stream_id         uuid,
    cancel_requested  boolean NOT NULL DEFAULT false,
    errors            jsonb NOT NULL DEFAULT '[]',
    result            jsonb,
    progress          jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz
);

CREATE UNIQUE INDEX jobs_idempotency_key ON jobqueue.jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The claim: due jobs in (priority, run_at, id) order per queue. Only 'queued' jobs are
-- claimable; the scheduler promotes 'scheduled' and 'retrying' jobs to 'queued' when due, so a
-- queue with many future jobs never makes the claim scan past them.
CREATE INDEX jobs_queued ON jobqueue.jobs (queue, priority, run_at, id) WHERE state = 'queued';
-- The scheduler: parked jobs by due time.
CREATE INDEX jobs_parked ON jobqueue.jobs (run_at) WHERE state IN ('scheduled', 'retrying');
-- The reaper: running jobs by lease expiry. (A closed stream's jobs are released by id and
-- token, which the dispatcher holds, so stream_id needs no index.)
CREATE INDEX jobs_running ON jobqueue.jobs (lease_expires_at) WHERE state = 'running';
-- ListJobs needs no index of its own: ids are time-ordered UUIDv7s, so the primary key is
-- "newest first" (see store/sql/jobs.sql list_jobs).

CREATE TABLE jobqueue.dead_letters (
    job_id           uuid PRIMARY KEY,
    queue            text NOT NULL,
    kind             text NOT NULL,
    payload          jsonb NOT NULL,
    priority         integer NOT NULL,
    attempts         integer NOT NULL,
    max_attempts     integer NOT NULL,
    errors           jsonb NOT NULL,
    idempotency_key  text,
    lease_seconds    double precision NOT NULL,
    backoff_base     double precision,
    backoff_cap      double precision,
    created_at       timestamptz NOT NULL,
    failed_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_failed_at ON jobqueue.dead_letters (failed_at DESC, job_id DESC);

CREATE TABLE jobqueue.queues (
    name        text PRIMARY KEY,
    paused      boolean NOT NULL DEFAULT false,
    paused_at   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
