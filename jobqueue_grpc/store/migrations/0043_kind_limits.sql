-- Flow control per kind (issue 14 item 1, "optionally per-kind"): a queue's limits for one kind
-- of its jobs. Both apply: a job of a limited kind starts only when its queue's limits (0040) and
-- its kind's limits allow it (rules in domain/limits.py). A queue with kind limits has a row in
-- queue_limits (all NULL when only its kinds are limited), so it goes through the flow-controlled
-- claim; a queue without one is claimed by claim_jobs as before and nothing here is touched.

CREATE TABLE jobqueue.kind_limits (
    queue            text NOT NULL,
    kind             text NOT NULL,
    max_running      integer CHECK (max_running >= 0),      -- the kind in the queue; NULL: no cap
    key_max_running  integer CHECK (key_max_running >= 0),  -- per concurrency key of the kind
    rate             double precision CHECK (rate > 0),     -- starts per second of the kind
    burst            double precision CHECK (burst >= 1),
    key_rate         double precision CHECK (key_rate > 0), -- starts per second per key of the kind
    key_burst        double precision CHECK (key_burst >= 1),
    fair_share       boolean NOT NULL DEFAULT false,
    tokens           double precision NOT NULL DEFAULT 0,   -- the kind's bucket ...
    refilled_at      timestamptz NOT NULL DEFAULT now(),    -- ... as of this time
    key_cursor       text,                                   -- the kind's fair-share walk
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, kind)
);

-- The flow-controlled claim's counted leases per (queue, kind, key) of every limited queue (key
-- '' is the kind's total), kept like running_counts (by the claim and the settle statements'
-- uncount fragment) whether or not the kind has limits, so limits set on a kind later find its
-- counters right.
CREATE TABLE jobqueue.kind_running_counts (
    queue    text NOT NULL,
    kind     text NOT NULL,
    key      text NOT NULL,
    running  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, kind, key)
);

-- Per-key token buckets of a kind's key_rate.
CREATE TABLE jobqueue.kind_key_buckets (
    queue        text NOT NULL,
    kind         text NOT NULL,
    key          text NOT NULL,
    tokens       double precision NOT NULL,
    refilled_at  timestamptz NOT NULL,
    PRIMARY KEY (queue, kind, key)
);

-- The fair-share walk over one kind's keys (walk_kind_keys): one probe per key, however many
-- jobs of other kinds a key has waiting. Keyed waiting jobs only, like jobs_queued_by_key.
CREATE INDEX jobs_queued_by_kind_key ON jobqueue.jobs (queue, kind, concurrency_key, priority, run_at, id)
    WHERE state = 'queued' AND concurrency_key IS NOT NULL;
