"""ScheduleService statements, and the schedule loop's: fire due ticks exactly once.

A due schedule is claimed FOR UPDATE SKIP LOCKED; its ticks' jobs are inserted and its next_run_at
advanced in that one transaction, each job keyed by (schedule, tick) (domain/schedules.py
tick_key). Two replicas never fire one tick twice (the second skips the locked row, or finds it
advanced), a crash before the commit fires nothing (the next pass, here or elsewhere, fires it),
and a tick fired again for any other reason finds its key taken.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from jobqueue_grpc.domain import schedules as sched
from jobqueue_grpc.domain.errors import AlreadyExists, schedule_not_found
from jobqueue_grpc.domain.jobs import NewJob
from jobqueue_grpc.domain.records import Fired, JobRecord, ScheduleRecord
from jobqueue_grpc.store.errors import translated
from jobqueue_grpc.store.jobs import insert_unique
from jobqueue_grpc.store.notify import Peers
from jobqueue_grpc.store.queries import q

_N = len(ScheduleRecord._fields)


def _record(r: asyncpg.Record) -> ScheduleRecord:
    return ScheduleRecord._make(r[:_N])


def timing_of(r: ScheduleRecord) -> sched.Timing:
    return sched.Timing(r.cron, r.every_seconds, r.timezone)


@translated
class ScheduleStore:
    def __init__(self, pool: asyncpg.Pool, peers: Peers | None = None) -> None:
        self.pool = pool
        self.peers = peers if peers is not None else Peers()

    async def create(
        self,
        schedule_id: str,
        timing: sched.Timing,
        template: NewJob,
        *,
        paused: bool,
        missed: sched.Missed,
        catch_up_max: int,
    ) -> ScheduleRecord:
        async with self.pool.acquire() as conn:
            now: datetime = await conn.fetchval(q("db_now"))
            row = await conn.fetchrow(
                q("insert_schedule"),
                schedule_id,
                timing.cron,
                timing.every,
                timing.timezone,
                sched.template_json(template),
                paused,
                missed.value,
                catch_up_max,
                sched.first_tick(timing, now),
            )
        if row is None:
            raise AlreadyExists(f"schedule {schedule_id} exists", reason="SCHEDULE_EXISTS")
        return _record(row)

    async def get(self, schedule_id: str) -> ScheduleRecord:
        row = await self.pool.fetchrow(q("get_schedule"), schedule_id)
        if row is None:
            raise schedule_not_found(schedule_id)
        return _record(row)

    async def page(self, after: str, limit: int) -> list[ScheduleRecord]:
        return [_record(r) for r in await self.pool.fetch(q("list_schedules"), after, limit)]

    async def update(
        self,
        schedule_id: str,
        timing: sched.Timing,
        template: NewJob,
        *,
        paused: bool,
        missed: sched.Missed,
        catch_up_max: int,
    ) -> ScheduleRecord:
        """Replaces every writable field; the next tick is computed afresh only when the timing
        changed (or the schedule is resumed by this update)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q("lock_schedule"), schedule_id)
            if row is None:
                raise schedule_not_found(schedule_id)
            old = _record(row)
            next_run_at = old.next_run_at
            if timing_of(old) != timing or (old.paused and not paused):
                next_run_at = sched.first_tick(timing, row["now"])
            new = await conn.fetchrow(
                q("update_schedule"),
                schedule_id,
                timing.cron,
                timing.every,
                timing.timezone,
                sched.template_json(template),
                paused,
                missed.value,
                catch_up_max,
                next_run_at,
            )
        assert new is not None
        return _record(new)

    async def delete(self, schedule_id: str) -> None:
        if await self.pool.fetchval(q("delete_schedule"), schedule_id) is None:
            raise schedule_not_found(schedule_id)

    async def pause(self, schedule_id: str) -> ScheduleRecord:
        row = await self.pool.fetchrow(q("pause_schedule"), schedule_id)
        if row is None:
            raise schedule_not_found(schedule_id)
        return _record(row)

    async def resume(self, schedule_id: str) -> ScheduleRecord:
        """Unpauses; the next tick is the first after now (none of the paused time's run)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q("lock_schedule"), schedule_id)
            if row is None:
                raise schedule_not_found(schedule_id)
            old = _record(row)
            if not old.paused:
                return old
            new = await conn.fetchrow(
                q("update_schedule"),
                old.id,
                old.cron,
                old.every_seconds,
                old.timezone,
                old.template,
                False,
                old.missed,
                old.catch_up_max,
                sched.first_tick(timing_of(old), row["now"]),
            )
        assert new is not None
        return _record(new)

    async def trigger(self, schedule_id: str) -> tuple[JobRecord, bool]:
        """One job from the template now, outside the ticks; next_run_at unchanged."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q("lock_schedule"), schedule_id)
            if row is None:
                raise schedule_not_found(schedule_id)
            key = sched.trigger_key(schedule_id, row["now"])
            job = sched.template_job(_record(row).template, run_at=None, key=key)
            [(out, created)] = await insert_unique(conn, [job], self.peers.listening)
            await conn.execute(q("triggered_schedule"), schedule_id, out.id)
        return out, created

    async def fire_due(self, limit: int, grace: float) -> list[Fired]:
        """One pass of the loop: every due schedule (up to `limit`) fires its ticks, as the
        missed-tick policy says, and is advanced, in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(q("due_schedules"), limit)
            if not rows:
                return []
            plans: list[tuple[ScheduleRecord, sched.TickPlan]] = []
            jobs: list[NewJob] = []
            for row in rows:
                rec = _record(row)
                p = sched.plan(
                    timing_of(rec),
                    sched.Missed(rec.missed),
                    rec.catch_up_max,
                    rec.next_run_at,
                    row["now"],
                    grace,
                )
                plans.append((rec, p))
                jobs += [
                    sched.template_job(rec.template, run_at=t, key=sched.tick_key(rec.id, t))
                    for t in p.fire
                ]
            results = await insert_unique(conn, jobs, self.peers.listening) if jobs else []
            out: list[Fired] = []
            ids: list[str] = []
            nexts: list[datetime] = []
            lasts: list[datetime | None] = []
            last_jobs: list[object] = []
            i = 0
            for rec, p in plans:
                mine = results[i : i + len(p.fire)]
                i += len(p.fire)
                ids.append(rec.id)
                nexts.append(p.next_run_at)
                lasts.append(p.fire[-1] if p.fire else None)
                last_jobs.append(mine[-1][0].id if mine else None)
                out.append(Fired(rec.id, len(p.fire), p.missed, [r for r, c in mine if c]))
            await conn.execute(q("advance_schedules"), ids, nexts, lasts, last_jobs)
        return out

    async def seconds_to_next(self) -> float | None:
        """Seconds until the next unpaused schedule is due (<= 0: due now); None: none."""
        value = await self.pool.fetchval(q("next_schedule_due"))
        return None if value is None else float(value)
