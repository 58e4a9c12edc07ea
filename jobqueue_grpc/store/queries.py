"""Loads the named SQL statements from store/sql/*.sql, once.

A statement starts at a `-- name: <name>` line and runs to the next one. `{job_columns}` stands for
the column list every Job is read with, so each query returns rows `api/convert.py` understands.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

SQL_DIR = Path(__file__).parent / "sql"

JOB_COLUMNS = (
    "id, queue, kind, payload, priority, state, attempt, max_attempts, run_at, idempotency_key, "
    "lease_seconds, backoff_base, backoff_cap, last_sleep, lease_token, lease_expires_at, "
    "worker_id, stream_id, cancel_requested, errors, result, progress, created_at, updated_at, "
    "started_at, finished_at"
)

# What a claim returns: the leased Job less what a claim fixes (state 'running', no result, no
# finish, not cancel-requested, updated_at = started_at), times as epoch seconds (float8: exact
# to the microsecond for centuries yet; asyncpg decodes a float several times faster than a
# timestamptz). api/convert.py leased_job() reads it.
LEASE_EPOCHS = (
    "date_part('epoch', j.run_at) AS run_at_s, date_part('epoch', j.created_at) AS created_at_s, "
    "date_part('epoch', j.started_at) AS started_at_s, "
    "date_part('epoch', j.lease_expires_at) AS lease_expires_at_s"
)
LEASED_COLUMNS = (
    "j.id, j.queue, j.kind, j.payload, j.priority, j.attempt, j.max_attempts, "
    "j.idempotency_key, j.lease_seconds, j.backoff_base, j.backoff_cap, j.last_sleep, "
    "j.lease_token, j.stream_id, j.worker_id, j.errors, j.progress, " + LEASE_EPOCHS
)

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in out:
            raise ValueError(f"duplicate query name {name}")
        out[name] = (
            body.strip()
            .replace("{job_columns}", JOB_COLUMNS)
            .replace("{leased_columns}", LEASED_COLUMNS)
            .replace("{lease_epochs}", LEASE_EPOCHS)
        )
    return out


@cache
def queries() -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(SQL_DIR.glob("*.sql")):
        for name, sql in parse(path.read_text()).items():
            if name in out:
                raise ValueError(f"query {name} defined twice (second in {path.name})")
            out[name] = sql
    return out


def q(name: str) -> str:
    """The SQL of one named statement."""
    return queries()[name]
