-- Flow control (issue 14): a dead letter keeps its job's concurrency key, so a job requeued after
-- its failed row was pruned (dead_letters.sql requeue_upsert) counts against its key's limits
-- again. Dead letters from before this migration have none (their job rows still hold theirs
-- until pruned, and a requeue keeps a row's own key).
ALTER TABLE jobqueue.dead_letters ADD COLUMN concurrency_key text;
