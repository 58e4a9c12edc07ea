-- Retention: the pruner finds finished jobs by state and age without scanning live ones.
-- (Numbered 0004 after its issue; migrations may skip numbers.)
CREATE INDEX jobs_finished ON jobqueue.jobs (state, finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');
-- Dead-letter retention and purges by age go oldest first.
CREATE INDEX dead_letters_failed_at_asc ON jobqueue.dead_letters (failed_at, job_id);
