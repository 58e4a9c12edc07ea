-- The key page tokens are signed with (domain/pagination.py), shared by every replica of this
-- database so that a token from one is accepted by the others. One row, made here once: 32
-- bytes from PostgreSQL's strong random source (gen_random_uuid; two uuids less their 12 fixed
-- version and variant bits leave 244 random bits). Numbered after its issue.
CREATE TABLE jobqueue.page_token_key (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    key       bytea NOT NULL CHECK (length(key) >= 32)
);
INSERT INTO jobqueue.page_token_key (key)
VALUES (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
