"""Loads the named SQL statements from store/sql/*.sql, once.

A statement starts at a `-- name: <name>` line and runs to the next header. A `-- fragment: <name>`
block is not a statement: it is text that statements include as `{<name>}`, so a clause two
statements share is written once. Besides fragments, statements may use:
- `{job_columns}`, `{leased_columns}`, `{lease_epochs}`, `{dead_letter_columns}`,
  `{schedule_columns}`: the column lists
  that domain/records.py's types are read with, built from those types' fields;
- `{jobs_channel}`, `{cancel_channel}`, `{replicas_channel}`: NOTIFY channels (store/notify.py);
- `{state_counts}`: one `count(*) FILTER (WHERE state = ...) AS <state>` per job state.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from jobqueue_grpc.domain.records import (
    EPOCH_FIELDS,
    DeadLetterRecord,
    JobRecord,
    LeasedJob,
    ScheduleRecord,
)
from jobqueue_grpc.domain.states import STATES
from jobqueue_grpc.store.notify import CHANNELS

SQL_DIR = Path(__file__).parent / "sql"

JOB_COLUMNS = ", ".join(JobRecord._fields)
DEAD_LETTER_COLUMNS = ", ".join(DeadLetterRecord._fields)
SCHEDULE_COLUMNS = ", ".join(ScheduleRecord._fields)
LEASE_EPOCHS = ", ".join(
    f"date_part('epoch', j.{column}) AS {name}" for name, column in EPOCH_FIELDS.items()
)
LEASED_COLUMNS = ", ".join(
    f"date_part('epoch', j.{EPOCH_FIELDS[f]}) AS {f}" if f in EPOCH_FIELDS else f"j.{f}"
    for f in LeasedJob._fields
)
STATE_COUNTS = ", ".join(f"count(*) FILTER (WHERE state = '{s}') AS {s}" for s in STATES)

SUBSTITUTIONS = {
    "job_columns": JOB_COLUMNS,
    "leased_columns": LEASED_COLUMNS,
    "lease_epochs": LEASE_EPOCHS,
    "dead_letter_columns": DEAD_LETTER_COLUMNS,
    "schedule_columns": SCHEDULE_COLUMNS,
    "state_counts": STATE_COUNTS,
    **{k: f"'{v}'" for k, v in CHANNELS.items()},
}

_HEADER = re.compile(r"^-- (name|fragment): (\w+)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _blocks(text: str) -> list[tuple[str, str, str]]:
    """(kind, name, body) of every `-- name:` and `-- fragment:` block of a file."""
    parts = _HEADER.split(text)
    return [
        (k, n, b.strip()) for k, n, b in zip(parts[1::3], parts[2::3], parts[3::3], strict=True)
    ]


def _expand(sql: str, fragments: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in fragments:
            return _expand(fragments[name], fragments)
        return SUBSTITUTIONS.get(name, m.group(0))  # anything else (a JSON literal) stays

    return _PLACEHOLDER.sub(one, sql)


def parse(texts: list[str]) -> dict[str, str]:
    """The statements of these files, expanded; any file may use any file's fragments."""
    blocks = [b for text in texts for b in _blocks(text)]
    fragments: dict[str, str] = {}
    raw: dict[str, str] = {}
    for kind, name, body in blocks:
        if name in fragments or name in raw:
            raise ValueError(f"query or fragment {name} defined twice")
        (fragments if kind == "fragment" else raw)[name] = body
    return {name: _expand(sql, fragments) for name, sql in raw.items()}


@cache
def queries() -> dict[str, str]:
    return parse([path.read_text() for path in sorted(SQL_DIR.glob("*.sql"))])


def q(name: str) -> str:
    """The SQL of one named statement."""
    return queries()[name]
