"""QueueService statements: queues found in the jobs table, live counts; pause and resume."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from jobqueue_grpc.domain.errors import NotFound
from jobqueue_grpc.domain.records import QueueRecord
from jobqueue_grpc.domain.states import STATES
from jobqueue_grpc.store.errors import translated
from jobqueue_grpc.store.pool import Conn
from jobqueue_grpc.store.queries import q


def queue_not_found(name: str) -> NotFound:
    return NotFound(
        f"queue {name!r} not found: it has no jobs and no settings", reason="QUEUE_NOT_FOUND"
    )


def _queue(r: asyncpg.Record) -> QueueRecord:
    """A row of list_queues / get_queue: name, paused, paused_at, and a count per state."""
    return QueueRecord(r["name"], r["paused"], r["paused_at"], {s: r[s] or 0 for s in STATES})


@translated
class QueueStore:
    def __init__(self, pool: asyncpg.Pool, on_available: Callable[[], None] = lambda: None) -> None:
        self.pool = pool
        self.on_available = on_available  # after a resume commits (see Store)

    async def list(self) -> list[QueueRecord]:
        return list(map(_queue, await self.pool.fetch(q("list_queues"))))

    async def get(self, name: str) -> QueueRecord:
        return await self._get(self.pool, name)

    async def pause(self, name: str) -> QueueRecord:
        """Pauses `name`, even before its first job (operators pre-pause)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(q("pause_queue"), name)
            return await self._get(conn, name)

    async def resume(self, name: str) -> QueueRecord:
        """Resumes `name` and wakes dispatchers on every replica so the backlog goes out at once."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.fetchval(q("resume_queue"), name)
            row = await self._get(conn, name)
            await conn.execute(q("notify_jobs_available"), [name])
        self.on_available()
        return row

    async def _get(self, conn: Conn | asyncpg.Pool, name: str) -> QueueRecord:
        row = await conn.fetchrow(q("get_queue"), name)
        if row is None:
            raise queue_not_found(name)
        return _queue(row)
