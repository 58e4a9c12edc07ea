"""The engine's seam to the database: what it needs of the store, as Protocols.

`jobqueue_grpc.store.Store` is the real thing; a test where timing matters (a database that
fails, then comes back) passes a fake that keeps these signatures.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from jobqueue_grpc.domain.jobs import NewJob, NewJobs
from jobqueue_grpc.domain.outcomes import Failure
from jobqueue_grpc.domain.records import (
    BatchInserted,
    Ended,
    Extended,
    Fired,
    Inserted,
    JobRecord,
    LeasedJob,
    Settled,
)
from jobqueue_grpc.store.leases import Decide
from jobqueue_grpc.store.limits import LimitedClaim
from jobqueue_grpc.store.notify import Commits

Slot = tuple[uuid.UUID, str]


class LeasePort(Protocol):
    async def claim(
        self, queues: Sequence[str], kinds: Sequence[str] | None, slots: Sequence[Slot]
    ) -> list[LeasedJob]: ...

    async def unlease_handed_off(self, jobs: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> int: ...

    async def promote_due(self, limit: int) -> int: ...

    async def next_parked_due(self) -> datetime | None: ...

    async def settle(
        self,
        completes: Sequence[tuple[uuid.UUID, uuid.UUID, str | None]],
        cancels: Sequence[tuple[uuid.UUID, uuid.UUID]],
        failures: Sequence[Failure],
    ) -> Settled: ...

    async def extend(
        self, items: Sequence[tuple[uuid.UUID, uuid.UUID, float | None]]
    ) -> list[Extended]: ...

    async def set_progress(
        self, job_id: uuid.UUID, token: uuid.UUID, progress_json: str
    ) -> bool: ...

    async def expire(self, limit: int, decide: Decide) -> list[Ended]: ...

    async def release(
        self, leases: Sequence[tuple[uuid.UUID, uuid.UUID]], decide: Decide
    ) -> list[Ended]: ...


class LimitPort(Protocol):
    async def limited_queues(self) -> frozenset[str]: ...

    async def claim(
        self, queue: str, kinds: Sequence[str] | None, slots: Sequence[Slot]
    ) -> LimitedClaim | None: ...


class JobPort(Protocol):
    async def insert(
        self, jobs: Sequence[NewJob], hand_off: Sequence[Slot | None] | None = None
    ) -> Inserted: ...

    async def insert_batch(self, jobs: NewJobs) -> BatchInserted: ...

    async def insert_unique(self, jobs: Sequence[NewJob]) -> list[tuple[JobRecord, bool]]: ...


class SchedulePort(Protocol):
    async def fire_due(self, limit: int, grace: float) -> list[Fired]: ...

    async def seconds_to_next(self) -> float | None: ...


class RetentionPort(Protocol):
    async def prune_jobs(self, state: Any, older_than: float, batch: int) -> int: ...

    async def prune_dead_letters(self, older_than: float, batch: int) -> int: ...


class Runnable(Protocol):
    async def run(self) -> None: ...

    async def stop(self) -> None: ...


class ListenerPort(Runnable, Protocol):
    watching: asyncio.Event

    def watch(self, on: bool) -> None: ...


class StorePort(Protocol):
    @property
    def leases(self) -> LeasePort: ...

    @property
    def jobs(self) -> JobPort: ...

    @property
    def retention(self) -> RetentionPort: ...

    @property
    def schedules(self) -> SchedulePort: ...

    @property
    def limits(self) -> LimitPort: ...

    @property
    def commits(self) -> Commits: ...

    def listener(
        self,
        *,
        on_jobs: Callable[[str], None],
        on_cancel: Callable[[uuid.UUID, uuid.UUID], None],
        on_limits: Callable[[str], None] = ...,
        on_changes: Callable[[list[uuid.UUID] | None], None],
    ) -> ListenerPort: ...
