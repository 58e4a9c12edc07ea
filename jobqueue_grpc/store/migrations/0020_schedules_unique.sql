-- Issue 13: unique jobs and schedules (numbered after its issue).

-- Unique jobs. unique_key is the key a job was enqueued with (given, or derived from kind, queue
-- and payload), followed by '@' and its window's start in epoch seconds when it has a period;
-- unique_states the states in which it refuses a duplicate (always every unfinished state, see
-- domain/unique.py). A job is in the index only while its state is one of those, so the index
-- itself refuses a second such job, on every replica at once (ON CONFLICT DO NOTHING).
ALTER TABLE jobqueue.jobs ADD COLUMN unique_key text, ADD COLUMN unique_states text[];
CREATE UNIQUE INDEX jobs_unique_key ON jobqueue.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state = ANY (unique_states);

-- Schedules (ScheduleService). A schedule's tick is enqueued in the transaction that advances
-- next_run_at, with the idempotency key 'schedule:<id>:<tick>' (store/schedules.py).
CREATE TABLE jobqueue.schedules (
    id             text PRIMARY KEY,
    cron           text,
    every_seconds  double precision CHECK (every_seconds > 0),
    timezone       text NOT NULL DEFAULT 'UTC',
    -- the job template as domain/schedules.py writes it (a NewJob's fields)
    template       jsonb NOT NULL,
    paused         boolean NOT NULL DEFAULT false,
    missed         text NOT NULL CHECK (missed IN ('skip', 'run_once', 'catch_up')),
    catch_up_max   integer NOT NULL DEFAULT 0 CHECK (catch_up_max >= 0),
    next_run_at    timestamptz NOT NULL,
    last_run_at    timestamptz,
    last_job_id    uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((cron IS NULL) <> (every_seconds IS NULL))
);
-- The schedule loop: unpaused schedules by due time.
CREATE INDEX schedules_due ON jobqueue.schedules (next_run_at) WHERE NOT paused;
