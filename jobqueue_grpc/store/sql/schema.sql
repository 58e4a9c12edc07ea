-- Migration bookkeeping and the health check.

-- name: migrations_bootstrap
CREATE SCHEMA IF NOT EXISTS jobqueue;
CREATE TABLE IF NOT EXISTS jobqueue.schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: advisory_lock
SELECT pg_advisory_lock($1);

-- name: advisory_unlock
SELECT pg_advisory_unlock($1);

-- name: applied_migrations
SELECT version FROM jobqueue.schema_migrations;

-- name: record_migration
INSERT INTO jobqueue.schema_migrations (version, name) VALUES ($1, $2);

-- name: missing_migrations
-- Which of the versions $1 (every migration this server knows) the database lacks: all of them
-- when it was never migrated. A version below the newest applied one can be missing too (a
-- branch's migration numbered under one that landed first), so each is looked up.
SELECT v FROM unnest($1::int[]) AS v
WHERE to_regclass('jobqueue.schema_migrations') IS NULL
   OR NOT EXISTS (SELECT 1 FROM jobqueue.schema_migrations m WHERE m.version = v);

-- name: schema_version
-- 0 when the schema has never been migrated.
SELECT CASE WHEN to_regclass('jobqueue.schema_migrations') IS NULL THEN 0
            ELSE (SELECT coalesce(max(version), 0) FROM jobqueue.schema_migrations) END;
