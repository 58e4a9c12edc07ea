-- Page tokens (domain/pagination.py).

-- name: page_token_key
-- The key every replica signs page tokens with (migration 0012 makes it).
SELECT key FROM jobqueue.page_token_key;
