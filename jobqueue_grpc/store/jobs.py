"""JobService statements: enqueue (with idempotency), get, list, cancel."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from jobqueue_grpc.domain.errors import FailedPrecondition, job_not_found
from jobqueue_grpc.domain.jobs import Limits, NewJob, NewJobs
from jobqueue_grpc.domain.records import (
    BatchInserted,
    CancelCounts,
    Inserted,
    JobRecord,
    LeasedJob,
)
from jobqueue_grpc.domain.states import CancelOutcome, Event, JobState, allowed, cancel_outcome
from jobqueue_grpc.store.errors import conflict, translated
from jobqueue_grpc.store.notify import Peers
from jobqueue_grpc.store.pool import Conn
from jobqueue_grpc.store.queries import q

Slot = tuple[uuid.UUID, str]  # a Lease stream's id and its worker's id: where a job is leased

CANCEL_CHUNK = 500  # jobs one CancelJobs transaction locks at most

# The keyset cursor that sorts after every row: the first page starts here.
FIRST_PAGE_AFTER = uuid.UUID(int=(1 << 128) - 1)

_JOB = JobRecord._make
# where each LeasedJob field is in an insert_jobs row: a job column's index, or its epoch's name
_LEASED: list[int | str] = [
    JobRecord._fields.index(f) if f in JobRecord._fields else f for f in LeasedJob._fields
]


def job_record(r: asyncpg.Record) -> JobRecord:
    """A row read with {job_columns} (first) as a JobRecord."""
    return _JOB(r[: len(JobRecord._fields)])


def _leased(r: asyncpg.Record) -> LeasedJob:
    """A row of insert_jobs ({job_columns}, {lease_epochs}) that the insert leased."""
    return LeasedJob._make(r[i] for i in _LEASED)


def _array_or_value(values: list[Any]) -> tuple[list[Any] | None, Any]:
    """(None, v) when every element is v, else (values, None): insert_job_batch's two forms."""
    first = values[0]
    if values.count(first) == len(values):
        return None, first
    return values, None


@translated
class JobStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        peers: Peers | None = None,
        insert_pool: asyncpg.Pool | None = None,
    ) -> None:
        self.pool = pool
        self.peers = peers if peers is not None else Peers()  # enqueues NOTIFY only if listening
        self.insert_pool = insert_pool or pool  # insert()'s statements: see pool.INSERT_SETTINGS

    async def insert(
        self, jobs: Sequence[NewJob], hand_off: Sequence[Slot | None] | None = None
    ) -> Inserted:
        """Inserts `jobs` atomically; returns (row, created) for each, in order.

        One statement, so no BEGIN/COMMIT round trips: all the jobs commit together or none do.
        A job whose idempotency key already names a job (or an earlier job of the same batch)
        is not inserted: the existing row comes back with created = False. A job given a
        (stream id, worker id) slot in `hand_off` is inserted leased to it when it is due and
        its queue is not paused (state 'running'; see insert_jobs); those come back in `leased`.
        """
        async with self.insert_pool.acquire() as conn:
            return await self._insert(conn, jobs, hand_off)

    async def _insert(
        self, conn: Conn, jobs: Sequence[NewJob], hand_off: Sequence[Slot | None] | None
    ) -> Inserted:
        streams = workers = None
        if hand_off is not None:
            streams = [s[0] if s else None for s in hand_off]
            workers = [s[1] if s else None for s in hand_off]
        rows = await conn.fetch(
            q("insert_jobs"),
            [j.id for j in jobs],
            [j.queue for j in jobs],
            [j.kind for j in jobs],
            [j.payload_json for j in jobs],
            [j.priority for j in jobs],
            [j.max_attempts for j in jobs],
            [j.run_at for j in jobs],
            [j.idempotency_key for j in jobs],
            [j.lease_seconds for j in jobs],
            [j.backoff_base for j in jobs],
            [j.backoff_cap for j in jobs],
            self.peers.listening,
            streams,
            workers,
            [j.metadata_json for j in jobs],
            [j.traceparent for j in jobs],
            [j.tracestate for j in jobs],
            [j.concurrency_key for j in jobs],
        )
        inserted = {r[0]: r for r in rows}
        leased = [_leased(r) for r in rows if r["state"] == JobState.RUNNING] if streams else []
        existing: dict[str, JobRecord] = {}
        missing = [j.idempotency_key for j in jobs if j.id not in inserted and j.idempotency_key]
        if missing:
            existing = {
                r.idempotency_key: r
                for r in map(_JOB, await conn.fetch(q("jobs_by_idempotency_keys"), missing))
                if r.idempotency_key is not None
            }
        out: list[tuple[JobRecord, bool]] = []
        for j in jobs:
            row = inserted.get(j.id)
            if row is not None:
                out.append((job_record(row), True))
            else:
                assert j.idempotency_key is not None
                old = existing.get(j.idempotency_key)
                if old is None:  # the conflicting job vanished (pruned) mid-call: rare
                    raise conflict()
                out.append((old, False))
        return Inserted(out, leased)

    async def insert_batch(self, jobs: NewJobs) -> BatchInserted:
        """insert() for EnqueueBatch: the same statement semantics (atomic, idempotency keys, the
        NOTIFY), without reading the inserted rows back. The caller holds every value it sent;
        the database adds created_at/updated_at (= `at`), the state (scheduled when run_at is
        after `at`, else queued) and run_at (`at` when none was given), and nothing else that a
        new job's row does not get from its column defaults.
        """
        if not jobs.ids:
            return BatchInserted([], None, {}, {})
        columns: list[Any] = []
        for values in (
            jobs.queue,
            jobs.kind,
            jobs.payload_json,
            jobs.priority,
            jobs.max_attempts,
            jobs.run_at,
            jobs.idempotency_key,
            jobs.lease_seconds,
            jobs.backoff_base,
            jobs.backoff_cap,
        ):
            columns += _array_or_value(values)
        # The ids are ours (canonical text, nothing to quote): one join makes the literal.
        # asyncpg's array encoder would spend about a microsecond of Python per element.
        ids = "{" + ",".join(jobs.ids) + "}"
        keyless = jobs.idempotency_key.count(None) == len(jobs)
        statement = q("insert_job_batch_without_keys" if keyless else "insert_job_batch")
        async with self.pool.acquire() as conn:
            extra: list[Any] = []  # after $22: issue 16's columns, then the concurrency key
            for values in (jobs.metadata_json, jobs.traceparent, jobs.tracestate):
                extra += _array_or_value(values)
            extra += _array_or_value(jobs.concurrency_key)  # flow control: $29, $30
            groups = await conn.fetch(statement, ids, *columns, self.peers.listening, *extra)
            counts = {(g["queue"], g["state"]): g["n"] for g in groups}
            inserted = sum(counts.values())
            at = groups[0]["at"] if groups else None
            if inserted == len(jobs):
                return BatchInserted([True] * inserted, at, {}, counts)
            # Some keys already named jobs (or repeated inside the batch): the jobs without a key
            # were all inserted; of those with one, the ones whose id came back.
            keyed = {i for g in groups for i in g["keyed_ids"] or ()}
            keys = jobs.idempotency_key
            created = [k is None or i in keyed for i, k in zip(jobs.ids, keys, strict=True)]
            missing = [k for k, c in zip(keys, created, strict=True) if not c]
            existing: dict[str, JobRecord] = {
                r.idempotency_key: r
                for r in map(_JOB, await conn.fetch(q("jobs_by_idempotency_keys"), missing))
                if r.idempotency_key is not None
            }
        if any(k not in existing for k in missing):  # the conflicting job vanished (pruned)
            raise conflict()
        return BatchInserted(created, at, existing, counts)

    async def insert_unique(self, jobs: Sequence[NewJob]) -> list[tuple[JobRecord, bool]]:
        """insert() for jobs that may carry `unique` (EnqueueRequest.unique): atomically, no
        hand-off; a job refused by its idempotency key or its unique key comes back as the job
        holding that key, with created = False."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await insert_unique(conn, jobs, self.peers.listening)

    async def cancel_many(
        self,
        *,
        queue: str | None,
        kind: str | None,
        states: Sequence[JobState],
        created_before: datetime | None,
        dry_run: bool,
        chunk: int = CANCEL_CHUNK,
    ) -> CancelCounts:
        """CancelJobs: every matching job in `states` (those a cancel applies to), chunk by
        chunk, each chunk its own transaction (no call holds more than `chunk` row locks)."""
        waiting = [s.value for s in states if allowed(s, Event.CANCEL)]
        running = [s.value for s in states if allowed(s, Event.REQUEST_CANCEL)]
        filters = (queue, kind, waiting + running, created_before)
        if dry_run:
            n = int(await self.pool.fetchval(q("count_cancellable"), *filters))
            return CancelCounts(n, 0, 0, {})
        cancelled = requested = 0
        by_queue_kind: Counter[tuple[str, str]] = Counter()
        while True:
            rows = await self.pool.fetch(q("cancel_jobs_chunk"), *filters, chunk, waiting, running)
            done = 0
            for r in rows:
                if r["what"] == "cancelled":
                    by_queue_kind[(r["queue"], r["kind"])] += r["n"]
                    cancelled += r["n"]
                else:
                    requested += r["n"]
                done += r["n"]
            if done < chunk:
                break
        return CancelCounts(cancelled + requested, cancelled, requested, dict(by_queue_kind))

    async def publish_enqueue_defaults(self, limits: Limits) -> None:
        """Writes this server's enqueue defaults and limits where the SQL function
        jobqueue.enqueue reads them, so a transactional enqueue applies what Enqueue does."""
        await self.pool.execute(
            q("publish_enqueue_defaults"),
            limits.payload_max_bytes,
            limits.default_max_attempts,
            limits.default_lease_seconds,
        )

    async def get(self, job_id: uuid.UUID) -> JobRecord:
        row = await self.pool.fetchrow(q("get_job"), job_id)
        if row is None:
            raise job_not_found(str(job_id))
        return _JOB(row)

    async def list(
        self,
        *,
        queue: str | None,
        kind: str | None,
        state: JobState | None,
        after: uuid.UUID | None,
        limit: int,
        metadata: str | None = None,
        created_before: datetime | None = None,
    ) -> list[JobRecord]:
        """Newest first; `after` is the last id of the previous page; `metadata`, a JSON object
        every listed job's metadata holds; `created_before`, a bound on created_at."""
        last_id = after or FIRST_PAGE_AFTER
        state_value = state.value if state else None
        rows = await self.pool.fetch(
            q("list_jobs"), queue, kind, state_value, last_id, limit, metadata, created_before
        )
        return list(map(_JOB, rows))

    async def cancel(self, job_id: uuid.UUID) -> tuple[JobRecord, CancelOutcome]:
        async with self.pool.acquire() as conn, conn.transaction():
            state = await conn.fetchval(q("lock_job_state"), job_id)
            if state is None:
                raise job_not_found(str(job_id))
            outcome = cancel_outcome(JobState(state))
            if outcome is None:
                raise FailedPrecondition(
                    f"job {job_id} is already {state.upper()} and cannot be cancelled",
                    reason="JOB_TERMINAL",
                )
            query = "cancel_waiting_job" if outcome is CancelOutcome.CANCELLED else "request_cancel"
            row = await conn.fetchrow(q(query), job_id)
            assert row is not None
            return _JOB(row), outcome


async def insert_unique(
    conn: Conn, jobs: Sequence[NewJob], listening: bool
) -> list[tuple[JobRecord, bool]]:
    """insert_jobs_unique, then the jobs holding the keys of those it did not insert. Call it
    inside a transaction (the windows of period keys are computed from its now())."""
    uniques = [j.unique for j in jobs]
    rows = await conn.fetch(
        q("insert_jobs_unique"),
        [j.id for j in jobs],
        [j.queue for j in jobs],
        [j.kind for j in jobs],
        [j.payload_json for j in jobs],
        [j.priority for j in jobs],
        [j.max_attempts for j in jobs],
        [j.run_at for j in jobs],
        [j.idempotency_key for j in jobs],
        [j.lease_seconds for j in jobs],
        [j.backoff_base for j in jobs],
        [j.backoff_cap for j in jobs],
        listening,
        [u.key if u else None for u in uniques],
        [u.states_text if u else None for u in uniques],
        [u.period if u else None for u in uniques],
        [j.metadata_json for j in jobs],
        [j.traceparent for j in jobs],
        [j.tracestate for j in jobs],
        [j.concurrency_key for j in jobs],
    )
    inserted = {r[0]: _JOB(r) for r in rows}
    skipped = [j for j in jobs if j.id not in inserted]
    by_key: dict[str, JobRecord] = {}
    by_unique: dict[int, JobRecord] = {}
    keys = [j.idempotency_key for j in skipped if j.idempotency_key]
    if keys:
        by_key = {
            r.idempotency_key: r
            for r in map(_JOB, await conn.fetch(q("jobs_by_idempotency_keys"), keys))
            if r.idempotency_key is not None
        }
    rest = [j for j in skipped if j.unique and j.idempotency_key not in by_key]
    if rest:
        found = await conn.fetch(
            q("jobs_by_unique_keys"),
            [j.unique.key for j in rest if j.unique],
            [j.unique.period for j in rest if j.unique],
            [j.run_at for j in rest],
        )
        for r in found:
            by_unique[id(rest[r["u_n"] - 1])] = job_record(r)
    out: list[tuple[JobRecord, bool]] = []
    for j in jobs:
        row = inserted.get(j.id)
        if row is not None:
            out.append((row, True))
            continue
        old = by_key.get(j.idempotency_key or "") or by_unique.get(id(j))
        if old is None:  # the job holding the key finished (or was pruned) meanwhile: rare
            raise conflict()
        out.append((old, False))
    return out
