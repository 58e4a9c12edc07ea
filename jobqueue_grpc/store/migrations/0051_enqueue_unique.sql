-- Issue 13 on jobqueue.enqueue() (0030, with 0041's concurrency_key): unique jobs in the
-- caller's transaction, as EnqueueRequest.unique (domain/unique.py): unique_key, unique_states
-- (state names, e.g. '{queued,scheduled,running,retrying,succeeded}'), unique_period. The same
-- stored key and states as the RPC's, so the function and the RPC refuse each other's duplicates
-- (the partial unique index jobs_unique_key of migration 0020). The function derives no key:
-- give one.
--
--   SELECT * FROM jobqueue.enqueue('rebuild_index', unique_key => 'rebuild');
--
-- Numbered after 0041, which last defined the function, so that this definition is the one left
-- on every database. New parameters change the signature, which CREATE OR REPLACE cannot do (it
-- would add an overload, and calls by name would be ambiguous): 0041's is dropped first. The new
-- parameters are last, so positional calls still work. The rest of the body is 0041's; the
-- channel literal 'jobqueue_jobs' must stay store/notify.py JOBS_CHANNEL
-- (tests/test_txn_enqueue.py checks every migration that defines the function).
DROP FUNCTION jobqueue.enqueue(text, jsonb, text, integer, integer, timestamptz, text, interval,
                               interval, interval, jsonb, text, text, text);

CREATE FUNCTION jobqueue.enqueue(
    kind             text,
    payload          jsonb DEFAULT '{}',
    queue            text DEFAULT 'default',
    priority         integer DEFAULT 0,
    max_attempts     integer DEFAULT 0,
    run_at           timestamptz DEFAULT NULL,
    idempotency_key  text DEFAULT NULL,
    lease_duration   interval DEFAULT NULL,
    backoff_base     interval DEFAULT NULL,
    backoff_cap      interval DEFAULT NULL,
    metadata         jsonb DEFAULT NULL,
    traceparent      text DEFAULT NULL,
    tracestate       text DEFAULT NULL,
    concurrency_key  text DEFAULT NULL,
    unique_key       text DEFAULT NULL,
    unique_states    text[] DEFAULT NULL,
    unique_period    interval DEFAULT NULL,
    OUT id           uuid,
    OUT state        text,
    OUT created      boolean
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    d              jobqueue.enqueue_defaults;
    q              text := coalesce(nullif(enqueue.queue, ''), 'default');
    p              jsonb := coalesce(enqueue.payload, '{}');
    key            text := nullif(enqueue.idempotency_key, '');
    lease          double precision;
    base           double precision := extract(epoch FROM enqueue.backoff_base);
    cap            double precision := extract(epoch FROM enqueue.backoff_cap);
    md             jsonb := enqueue.metadata;
    tp             text := nullif(enqueue.traceparent, '');
    ts             text := nullif(enqueue.tracestate, '');
    ck             text := nullif(enqueue.concurrency_key, '');
    size           integer;
    pair           record;
    new_id         uuid := jobqueue.uuid7();
    new_state      text;
    -- unique: domain/unique.py
    uk             text := nullif(enqueue.unique_key, '');
    upd            double precision := extract(epoch FROM enqueue.unique_period);
    us             text[];
    stored_key     text;
    all_states     CONSTANT text[] := ARRAY['queued', 'scheduled', 'running', 'retrying',
                                            'succeeded', 'failed', 'cancelled'];
    unfinished     CONSTANT text[] := ARRAY['queued', 'scheduled', 'running', 'retrying'];
BEGIN
    SELECT * INTO d FROM jobqueue.enqueue_defaults;
    lease := coalesce(extract(epoch FROM enqueue.lease_duration), d.lease_seconds);

    IF q !~ '^[a-z0-9_.-]{1,64}$' THEN
        PERFORM jobqueue._bad_argument('queue', format('queue %L must match [a-z0-9_.-]{1,64}', left(q, 64)));
    END IF;
    IF coalesce(enqueue.kind, '') = '' THEN
        PERFORM jobqueue._bad_argument('kind', 'kind is required');
    ELSIF enqueue.kind !~ '^[a-z0-9_.-]{1,128}$' THEN
        PERFORM jobqueue._bad_argument('kind', format('kind %L must match [a-z0-9_.-]{1,128}', left(enqueue.kind, 64)));
    END IF;
    IF jsonb_typeof(p) <> 'object' THEN
        PERFORM jobqueue._bad_argument('payload', 'payload must be a JSON object');
    END IF;
    -- jsonb's text form has a space after each ':' and ',': a little longer than the compact
    -- JSON the RPC measures, so a payload right at the limit may pass one and not the other.
    size := octet_length(p::text);
    IF size > d.payload_max_bytes THEN
        PERFORM jobqueue._bad_argument('payload', format('payload is %s bytes; the limit is %s', size, d.payload_max_bytes));
    END IF;
    IF enqueue.priority IS NULL OR enqueue.priority NOT BETWEEN -1000000 AND 1000000 THEN
        PERFORM jobqueue._bad_argument('priority', 'priority must be within ±1000000');
    END IF;
    IF enqueue.max_attempts IS NULL OR enqueue.max_attempts NOT BETWEEN 0 AND 1000 THEN
        PERFORM jobqueue._bad_argument('max_attempts', 'max_attempts must be 1..1000 (0 means the default)');
    END IF;
    IF enqueue.run_at IS NOT NULL
       AND enqueue.run_at NOT BETWEEN '1970-01-01T00:00:00Z' AND '9999-12-31T00:00:00Z' THEN
        PERFORM jobqueue._bad_argument('run_at', 'run_at must be between 1970-01-01T00:00:00Z and 9999-12-31T00:00:00Z');
    END IF;
    IF length(key) > 255 THEN
        PERFORM jobqueue._bad_argument('idempotency_key', 'idempotency_key is longer than 255 characters');
    END IF;
    IF lease NOT BETWEEN 1 AND 86400 THEN
        PERFORM jobqueue._bad_argument('lease_duration', 'lease_duration must be between 1 s and 24 h');
    END IF;
    IF base NOT BETWEEN 0 AND 2592000 THEN
        PERFORM jobqueue._bad_argument('retry_policy.backoff_base', 'backoff_base must be between 0 and 30 days');
    END IF;
    IF cap NOT BETWEEN 0 AND 2592000 THEN
        PERFORM jobqueue._bad_argument('retry_policy.backoff_cap', 'backoff_cap must be between 0 and 30 days');
    END IF;
    IF cap < base THEN
        PERFORM jobqueue._bad_argument('retry_policy.backoff_cap', 'backoff_cap is below backoff_base');
    END IF;
    -- metadata: domain/metadata.py metadata_violations
    IF md IS NOT NULL AND jsonb_typeof(md) <> 'object' THEN
        PERFORM jobqueue._bad_argument('metadata', 'metadata must be a JSON object of strings');
    END IF;
    IF md = '{}' THEN
        md := NULL;
    END IF;
    IF md IS NOT NULL THEN
        IF (SELECT count(*) FROM jsonb_object_keys(md)) > 32 THEN
            PERFORM jobqueue._bad_argument('metadata', 'metadata holds more than 32 pairs');
        END IF;
        FOR pair IN SELECT * FROM jsonb_each(md) LOOP
            IF pair.key !~ '^[A-Za-z0-9_.:/-]{1,64}$' THEN
                PERFORM jobqueue._bad_argument('metadata', format('metadata key %L must match [A-Za-z0-9_.:/-]{1,64}', left(pair.key, 64)));
            END IF;
            IF jsonb_typeof(pair.value) <> 'string' THEN
                PERFORM jobqueue._bad_argument('metadata', format('metadata[%s] must be a string', pair.key));
            END IF;
            IF length(pair.value #>> '{}') > 512 THEN
                PERFORM jobqueue._bad_argument('metadata', format('metadata[%s] is longer than 512 characters', pair.key));
            END IF;
        END LOOP;
    END IF;
    -- trace context: domain/metadata.py trace_violations
    IF tp IS NOT NULL AND (tp !~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
                           OR left(tp, 2) = 'ff'
                           OR substr(tp, 4, 32) = repeat('0', 32)
                           OR substr(tp, 37, 16) = repeat('0', 16)) THEN
        PERFORM jobqueue._bad_argument('traceparent', 'traceparent must be a W3C traceparent like 00-<32 hex>-<16 hex>-<2 hex>');
    END IF;
    IF ts IS NOT NULL AND tp IS NULL THEN
        PERFORM jobqueue._bad_argument('tracestate', 'tracestate needs a traceparent');
    END IF;
    IF length(ts) > 512 OR ts !~ '^[ -~]*$' THEN
        PERFORM jobqueue._bad_argument('tracestate', 'tracestate must be at most 512 printable ASCII characters');
    END IF;
    -- concurrency key: domain/limits.py concurrency_key_violation
    IF ck !~ '^[A-Za-z0-9_.:/@-]{1,128}$' THEN
        PERFORM jobqueue._bad_argument('concurrency_key', 'concurrency_key must match [A-Za-z0-9_.:/@-]{1,128}');
    END IF;

    -- unique: domain/unique.py check_unique and refusing_states. The function derives no key
    -- (the RPC's derived keys hash its Struct's JSON, whose numbers are floats): give one.
    IF uk IS NULL AND (enqueue.unique_states IS NOT NULL OR upd IS NOT NULL) THEN
        PERFORM jobqueue._bad_argument('unique.key', 'unique.key is required with unique.states or unique.period (the function derives no key)');
    END IF;
    IF length(uk) > 255 THEN
        PERFORM jobqueue._bad_argument('unique.key', 'unique key is longer than 255 characters');
    END IF;
    IF left(uk, 8) = 'derived:' THEN
        PERFORM jobqueue._bad_argument('unique.key', 'a unique key may not start with ''derived:''');
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(enqueue.unique_states) s
               WHERE s IS NULL OR NOT lower(s) = ANY (all_states)) THEN
        PERFORM jobqueue._bad_argument('unique.states', format('unknown state in %s (the states are %s)', enqueue.unique_states, array_to_string(all_states, ', ')));
    END IF;
    IF cardinality(enqueue.unique_states) > 0
       AND NOT (SELECT array_agg(lower(s)) FROM unnest(enqueue.unique_states) s) @> unfinished THEN
        PERFORM jobqueue._bad_argument('unique.states', 'states must include every unfinished state (queued, scheduled, running, retrying); list succeeded, failed or cancelled to refuse duplicates of finished jobs too');
    END IF;
    IF upd NOT BETWEEN 1 AND 366 * 86400 THEN
        PERFORM jobqueue._bad_argument('unique.period', 'period must be between 1 s and 366 days');
    END IF;
    IF uk IS NOT NULL THEN
        -- the states given, in their order of all_states; none: the unfinished ones, or with a
        -- period every state (one job per window)
        SELECT array_agg(s ORDER BY array_position(all_states, s)) INTO us
        FROM unnest(all_states) s
        WHERE s = ANY (CASE WHEN cardinality(enqueue.unique_states) > 0
                            THEN (SELECT array_agg(lower(g)) FROM unnest(enqueue.unique_states) g)
                            WHEN upd IS NOT NULL THEN all_states
                            ELSE unfinished END);
        -- store/sql/jobs.sql unique_key_of: '@' and the window's start with a period
        stored_key := CASE WHEN upd IS NULL THEN uk
                           ELSE uk || '@' || (floor(date_part('epoch', coalesce(enqueue.run_at, now())) / upd)
                                              * upd)::bigint
                      END;
    END IF;

    new_state := CASE WHEN enqueue.run_at > now() THEN 'scheduled' ELSE 'queued' END;
    -- No conflict target: the idempotency key's index and the unique key's (jobs_unique_key: a
    -- row is in it while its state is one of its unique_states) both refuse a duplicate.
    INSERT INTO jobqueue.jobs AS j (id, queue, kind, payload, priority, state, max_attempts,
                                    run_at, idempotency_key, lease_seconds, backoff_base,
                                    backoff_cap, metadata, traceparent, tracestate,
                                    concurrency_key, unique_key, unique_states)
    VALUES (new_id, q, enqueue.kind, p, enqueue.priority, new_state,
            CASE WHEN enqueue.max_attempts = 0 THEN d.default_max_attempts ELSE enqueue.max_attempts END,
            coalesce(enqueue.run_at, now()), key, lease, base, cap, md, tp, ts, ck,
            stored_key, us)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        id := new_id;
        state := new_state;
        created := true;
        IF new_state = 'queued' THEN
            PERFORM pg_notify('jobqueue_jobs', q);  -- store/notify.py JOBS_CHANNEL; sent at commit
        END IF;
        RETURN;
    END IF;
    -- A key names a job already (committed, or committed by the transaction we waited for):
    -- the idempotency key's first, as the RPC does.
    IF key IS NOT NULL THEN
        SELECT j.id, j.state INTO id, state FROM jobqueue.jobs j WHERE j.idempotency_key = key;
    END IF;
    IF id IS NULL AND stored_key IS NOT NULL THEN
        SELECT j.id, j.state INTO id, state FROM jobqueue.jobs j
        WHERE j.unique_key = stored_key AND j.state = ANY (j.unique_states);
    END IF;
    IF id IS NULL THEN  -- not visible to this snapshot (REPEATABLE READ or SERIALIZABLE), or the
                        -- job holding the unique key left its unique states meanwhile
        RAISE EXCEPTION 'jobqueue.enqueue: the job holding idempotency_key % / unique key % is not visible to this transaction; retry', key, stored_key
            USING ERRCODE = '40001';
    END IF;
    created := false;
END
$$;
