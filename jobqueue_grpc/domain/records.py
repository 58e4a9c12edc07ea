"""The typed values the store returns. Plain data: the store fills them from its rows, the engine
and the api read them by attribute. A NamedTuple's fields are in the order of the columns the
store reads them with (store/queries.py builds its column lists from these), so a row becomes one
with a single tuple copy, which matters on the lease path.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from jobqueue_grpc.domain.states import JobState


class JobRecord(NamedTuple):
    """A job as stored (every column). JSON columns are their text; `state` a JobState value."""

    id: uuid.UUID
    queue: str
    kind: str
    payload: str
    priority: int
    state: str
    attempt: int
    max_attempts: int
    run_at: datetime
    idempotency_key: str | None
    lease_seconds: float
    backoff_base: float | None
    backoff_cap: float | None
    last_sleep: float | None
    lease_token: uuid.UUID | None
    lease_expires_at: datetime | None
    worker_id: str | None
    stream_id: uuid.UUID | None
    cancel_requested: bool
    errors: str
    result: str | None
    progress: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    unique_key: str | None
    concurrency_key: str | None  # flow control (issue 14)
    # issue 16: labels (jsonb text, None when none) and the producer's W3C trace context
    metadata: str | None
    traceparent: str | None
    tracestate: str | None


class LeasedJob(NamedTuple):
    """A job as a claim (or a hand-off) leased it: what a worker is sent, less what the lease fixes
    (state RUNNING, no result or finish, not cancel-requested, updated_at = started_at). Times are
    epoch seconds (float8 decodes several times faster than timestamptz, exact to the µs)."""

    id: uuid.UUID
    queue: str
    kind: str
    payload: str
    priority: int
    attempt: int
    max_attempts: int
    idempotency_key: str | None
    lease_seconds: float
    backoff_base: float | None
    backoff_cap: float | None
    last_sleep: float | None
    lease_token: uuid.UUID
    stream_id: uuid.UUID
    worker_id: str
    errors: str
    progress: str | None
    run_at_s: float
    created_at_s: float
    started_at_s: float
    lease_expires_at_s: float
    # issue 16: what the worker needs to label the job and continue the producer's trace
    metadata: str | None
    traceparent: str | None
    tracestate: str | None
    concurrency_key: str | None  # flow control (issue 14): the worker sees the key too


# LeasedJob's epoch fields: the store reads them as date_part('epoch', <column>).
EPOCH_FIELDS = {
    "run_at_s": "run_at",
    "created_at_s": "created_at",
    "started_at_s": "started_at",
    "lease_expires_at_s": "lease_expires_at",
}


class Ended(NamedTuple):
    """An attempt that ended in failure (or a requested cancel), and the state it ended in."""

    id: uuid.UUID
    state: str
    queue: str
    kind: str


@dataclass(slots=True)
class Settled:
    """Which outcomes of a batch took effect; the rest were stale and changed nothing."""

    completed: set[uuid.UUID] = field(default_factory=set)
    cancelled: set[uuid.UUID] = field(default_factory=set)
    failed: list[Ended] = field(default_factory=list)


class Extended(NamedTuple):
    id: uuid.UUID
    lease_expires_at: datetime
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Inserted:
    """What inserting jobs did: per job (in order) its row and whether this insert made it, and
    the jobs it leased to waiting streams (a hand-off)."""

    jobs: list[tuple[JobRecord, bool]]
    leased: list[LeasedJob]


@dataclass(slots=True)
class BatchInserted:
    """What inserting a NewJobs batch did (store JobStore.insert_batch)."""

    created: list[bool]  # per job: inserted (False: its idempotency key already named a job)
    at: datetime | None  # the transaction's now(); None when nothing was inserted
    existing: dict[str, JobRecord]  # idempotency key -> the job holding it, per job not inserted
    counts: dict[tuple[str, str], int]  # (queue, state) -> jobs inserted


@dataclass(frozen=True, slots=True)
class QueueRecord:
    name: str
    paused: bool
    paused_at: datetime | None
    counts: Mapping[JobState, int]


class DeadLetterRecord(NamedTuple):
    """A dead letter: a self-contained copy of a job that failed for good."""

    job_id: uuid.UUID
    queue: str
    kind: str
    payload: str
    priority: int
    attempts: int
    max_attempts: int
    errors: str
    idempotency_key: str | None
    lease_seconds: float
    backoff_base: float | None
    backoff_cap: float | None
    created_at: datetime
    failed_at: datetime


@dataclass(frozen=True, slots=True)
class DeadLetterStats:
    total: int
    by_queue: list[tuple[str, int]]
    by_kind: list[tuple[str, int]]
    oldest: datetime | None
    newest: datetime | None


class ScheduleRecord(NamedTuple):
    """A schedule as stored (store/sql/schedules.sql). `template` is the job template's JSON
    (domain/schedules.py template_json); `missed` a domain.schedules.Missed value."""

    id: str
    cron: str | None
    every_seconds: float | None
    timezone: str
    template: str
    paused: bool
    missed: str
    catch_up_max: int
    next_run_at: datetime
    last_run_at: datetime | None
    last_job_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Fired:
    """What one pass of the schedule loop did with one due schedule."""

    schedule_id: str
    fired: int  # ticks that enqueued (or found) their job
    missed: int  # ticks that the missed-tick policy left out
    created: list[JobRecord]  # the jobs those ticks inserted


@dataclass(frozen=True, slots=True)
class CancelCounts:
    """What CancelJobs did (or, in a dry run, would do)."""

    matched: int
    cancelled: int
    cancel_requested: int
    by_queue_kind: dict[tuple[str, str], int]  # jobs cancelled now, for the metrics
