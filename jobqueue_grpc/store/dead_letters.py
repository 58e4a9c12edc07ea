"""DeadLetterService statements: list, get, stats, requeue, delete, purge.

Requeue and delete are each one statement (so one transaction): a job is never in both the
dead-letter queue and the live queue, nor in neither. Bulk requeue and purge work in bounded chunks,
one transaction each, so a large purge never holds many row locks or blocks dispatch for long.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from jobqueue_grpc.domain.errors import NotFound
from jobqueue_grpc.domain.records import DeadLetterRecord, DeadLetterStats, JobRecord
from jobqueue_grpc.store.errors import translated
from jobqueue_grpc.store.queries import q

# The keyset cursor that sorts after every row: the first page starts here.
FIRST_PAGE = (datetime.max.replace(tzinfo=UTC), uuid.UUID(int=(1 << 128) - 1))
CHUNK = 500


@dataclass(frozen=True)
class DeadLetterFilter:
    """Empty fields match everything."""

    queue: str | None = None
    kind: str | None = None
    failed_before: datetime | None = None  # strictly before
    failed_after: datetime | None = None  # at or after

    def args(self) -> tuple[str | None, str | None, datetime | None, datetime | None]:
        return (self.queue, self.kind, self.failed_before, self.failed_after)


_DEAD = DeadLetterRecord._make
_JOB = JobRecord._make


def dead_letter_not_found(job_id: uuid.UUID) -> NotFound:
    return NotFound(f"dead letter {job_id} not found", reason="DEAD_LETTER_NOT_FOUND")


@translated
class DeadLetterStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        chunk: int = CHUNK,
        on_available: Callable[[], None] = lambda: None,
    ) -> None:
        self.pool = pool
        self.chunk = chunk
        self.on_available = on_available  # after a requeue commits (see Store)

    async def get(self, job_id: uuid.UUID) -> DeadLetterRecord:
        row = await self.pool.fetchrow(q("get_dead_letter"), job_id)
        if row is None:
            raise dead_letter_not_found(job_id)
        return _DEAD(row)

    async def list(
        self, f: DeadLetterFilter, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[DeadLetterRecord]:
        failed_at, job_id = after or FIRST_PAGE
        rows = await self.pool.fetch(q("list_dead_letters"), *f.args(), failed_at, job_id, limit)
        return list(map(_DEAD, rows))

    async def stats(self, f: DeadLetterFilter) -> DeadLetterStats:
        rows = await self.pool.fetch(q("dead_letter_stats"), *f.args())
        total = next(r for r in rows if r["g"] == 3)
        return DeadLetterStats(
            total=total["n"],
            by_queue=[(r["queue"], r["n"]) for r in rows if r["g"] == 1],
            by_kind=[(r["kind"], r["n"]) for r in rows if r["g"] == 2],
            oldest=total["oldest"],
            newest=total["newest"],
        )

    async def count(self, f: DeadLetterFilter, limit: int | None = None) -> int:
        """What a bulk requeue or purge with these arguments would act on right now."""
        n = int(await self.pool.fetchval(q("count_dead_letters"), *f.args()))
        return n if limit is None else min(n, limit)

    async def requeue(self, job_id: uuid.UUID) -> JobRecord:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q("requeue_dead_letter"), job_id)
            if row is None:
                raise dead_letter_not_found(job_id)
            job = _JOB(row)
            await conn.execute(q("notify_jobs_available"), [job.queue])
        self.on_available()
        return job

    async def requeue_many(self, f: DeadLetterFilter, limit: int | None = None) -> int:
        """Requeues every match, a chunk per transaction; returns how many.

        Only dead letters that failed by the time the call began are taken, so jobs that fail
        again while it runs cannot keep it going for ever.
        """

        async with self.pool.acquire() as conn:
            cutoff = await conn.fetchval(q("db_now"))

            async def chunk(n: int) -> int:
                async with conn.transaction():
                    rows = await conn.fetch(q("requeue_dead_letters_chunk"), *f.args(), cutoff, n)
                    queues = [r["queue"] for r in rows]
                    if queues:
                        await conn.execute(q("notify_jobs_available"), sorted(set(queues)))
                if queues:
                    self.on_available()
                return len(queues)

            return await self._chunks(chunk, limit)

    async def delete(self, job_id: uuid.UUID) -> None:
        if not await self.pool.fetchval(q("delete_dead_letter"), job_id):
            raise dead_letter_not_found(job_id)

    async def purge(self, f: DeadLetterFilter, limit: int | None = None) -> int:
        """Deletes every match (and its failed job row), a chunk per transaction."""
        async with self.pool.acquire() as conn:
            cutoff = await conn.fetchval(q("db_now"))

            async def chunk(n: int) -> int:
                return int(await conn.fetchval(q("purge_dead_letters_chunk"), *f.args(), cutoff, n))

            return await self._chunks(chunk, limit)

    async def _chunks(self, run: Callable[[int], Awaitable[int]], limit: int | None) -> int:
        done = 0
        while limit is None or done < limit:
            n = self.chunk if limit is None else min(self.chunk, limit - done)
            got = await run(n)
            done += got
            if got < n:
                break
        return done
