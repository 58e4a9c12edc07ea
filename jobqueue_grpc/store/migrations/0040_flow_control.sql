-- Flow control (issue 14): concurrency keys, queue-wide and per-key running caps, token-bucket
-- rate limits, fair share. A queue without a row in queue_limits is claimed by claim_jobs as
-- before; nothing here is read or written for it.

-- A job's concurrency key (a tenant, a customer): caps and rates per key apply to it.
ALTER TABLE jobqueue.jobs ADD COLUMN concurrency_key text;
-- The lease token of a lease the flow-controlled claim counted (store/sql/limits.sql). The settle
-- statements decrement the running counters for a lease whose token is this one; a lease taken
-- by the plain claim (or a hand-off) never matches, so a stale value from an earlier attempt is
-- harmless.
ALTER TABLE jobqueue.jobs ADD COLUMN limit_token uuid;
-- The fair-share walk over a limited queue's keys (claim_jobs_limited): only keyed waiting jobs,
-- so enqueues and claims of jobs without a key never touch it.
CREATE INDEX jobs_queued_by_key ON jobqueue.jobs (queue, concurrency_key, priority, run_at, id)
    WHERE state = 'queued' AND concurrency_key IS NOT NULL;

CREATE TABLE jobqueue.queue_limits (
    queue            text PRIMARY KEY,
    max_running      integer CHECK (max_running >= 0),      -- the whole queue; NULL: no cap
    key_max_running  integer CHECK (key_max_running >= 0),  -- per concurrency key; NULL: no cap
    rate             double precision CHECK (rate > 0),     -- starts per second, the whole queue
    burst            double precision CHECK (burst >= 1),
    key_rate         double precision CHECK (key_rate > 0), -- starts per second, per key
    key_burst        double precision CHECK (key_burst >= 1),
    fair_share       boolean NOT NULL DEFAULT false,
    tokens           double precision NOT NULL DEFAULT 0,   -- the queue's bucket ...
    refilled_at      timestamptz NOT NULL DEFAULT now(),    -- ... as of this time
    key_cursor       text,                                   -- where the next fair-share walk starts
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Leases the flow-controlled claim took and that have not ended, per (queue, key); key '' is
-- the whole queue (every counted lease), a concurrency key is never ''.
CREATE TABLE jobqueue.running_counts (
    queue    text NOT NULL,
    key      text NOT NULL,
    running  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, key)
);

-- Per-key token buckets (a row once a key has started a job under a key rate).
CREATE TABLE jobqueue.key_buckets (
    queue        text NOT NULL,
    key          text NOT NULL,
    tokens       double precision NOT NULL,
    refilled_at  timestamptz NOT NULL,
    PRIMARY KEY (queue, key)
);
