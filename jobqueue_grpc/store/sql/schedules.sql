-- ScheduleService queries, and the schedule loop's (engine/maintenance/schedules.py).
-- `{schedule_columns}` is the column list a ScheduleRecord is read with.

-- name: insert_schedule
-- Nothing (no row) when the id is taken.
INSERT INTO jobqueue.schedules (id, cron, every_seconds, timezone, template, paused, missed,
                                catch_up_max, next_run_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9)
ON CONFLICT (id) DO NOTHING
RETURNING {schedule_columns};

-- name: get_schedule
SELECT {schedule_columns} FROM jobqueue.schedules WHERE id = $1;

-- name: lock_schedule
-- A schedule to change, locked (the loop skips it meanwhile), with the transaction's now().
SELECT {schedule_columns}, now() AS now FROM jobqueue.schedules WHERE id = $1 FOR UPDATE;

-- name: list_schedules
-- By id; $1 is the last id of the previous page ('' for the first).
SELECT {schedule_columns} FROM jobqueue.schedules WHERE id > $1 ORDER BY id LIMIT $2;

-- name: update_schedule
UPDATE jobqueue.schedules
SET cron = $2, every_seconds = $3, timezone = $4, template = $5::jsonb, paused = $6,
    missed = $7, catch_up_max = $8, next_run_at = $9, updated_at = now()
WHERE id = $1
RETURNING {schedule_columns};

-- name: delete_schedule
DELETE FROM jobqueue.schedules WHERE id = $1 RETURNING id;

-- name: pause_schedule
UPDATE jobqueue.schedules SET paused = true, updated_at = now()
WHERE id = $1
RETURNING {schedule_columns};

-- name: due_schedules
-- The loop's claim: due, unpaused schedules, locked; one another replica holds is skipped (it
-- is firing it). The transaction's now() comes with each, the clock every replica agrees on.
SELECT {schedule_columns}, now() AS now FROM jobqueue.schedules
WHERE NOT paused AND next_run_at <= now()
ORDER BY next_run_at
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: advance_schedules
-- In the transaction that enqueued the ticks' jobs: the next tick, and the last tick and its
-- job when one fired.
UPDATE jobqueue.schedules s
SET next_run_at = t.next_run_at,
    last_run_at = coalesce(t.last_run_at, s.last_run_at),
    last_job_id = coalesce(t.last_job_id, s.last_job_id),
    updated_at = now()
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::uuid[])
     AS t(id, next_run_at, last_run_at, last_job_id)
WHERE s.id = t.id;

-- name: triggered_schedule
UPDATE jobqueue.schedules SET last_run_at = now(), last_job_id = $2, updated_at = now()
WHERE id = $1;

-- name: next_schedule_due
-- Seconds until the next unpaused schedule is due (negative: overdue); NULL when none is.
SELECT date_part('epoch', min(next_run_at) - now()) FROM jobqueue.schedules WHERE NOT paused;
