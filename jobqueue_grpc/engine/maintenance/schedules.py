"""The schedule loop: each due tick enqueues its job, exactly once across every replica.

Every replica runs it. A pass claims due schedules FOR UPDATE SKIP LOCKED and, in that one
transaction, inserts their ticks' jobs and advances them (store/schedules.py fire_due), so a tick
is never lost to a crash nor doubled by a second replica. Between passes the loop sleeps until the
next schedule is due (by the database's clock), at most a second (a schedule made on another
replica is seen within it), and is woken early by a schedule created, changed or resumed here.
"""

from __future__ import annotations

import asyncio
import logging

from jobqueue_grpc import metrics
from jobqueue_grpc._aio import wait
from jobqueue_grpc.domain.states import JobState
from jobqueue_grpc.engine.loops import report
from jobqueue_grpc.engine.ports import SchedulePort
from jobqueue_grpc.engine.wakeups import WakeBus
from jobqueue_grpc.store.notify import Commits

log = logging.getLogger(__name__)

BATCH = 100  # schedules one pass fires at most
MAX_SLEEP = 1.0  # seconds between passes at most
LOCKED_RETRY = 0.05  # a due schedule another replica is firing: look again this soon


class ScheduleLoop:
    def __init__(self, schedules: SchedulePort, bus: WakeBus, commits: Commits, grace: float):
        self.schedules = schedules
        self.bus = bus
        self.commits = commits
        self.grace = grace  # seconds a tick may be late and still be on time
        self.stopped = False

    async def run(self) -> None:
        wake = self.bus.schedules
        while not self.stopped:
            delay = MAX_SLEEP
            wake.clear()  # before the pass: a wake-up during it is kept
            try:
                delay = await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                report(log, "schedule pass failed", exc)
            await wait(wake.wait(), delay)

    async def pass_once(self) -> float:
        """Fires what is due; returns how long to sleep before the next pass."""
        left = await self.schedules.seconds_to_next()
        if left is None:  # no schedule: one cheap statement a second, no transaction
            return MAX_SLEEP
        if left > 0:
            return min(MAX_SLEEP, left)
        fired = await self.schedules.fire_due(BATCH, self.grace)
        states: set[str] = set()
        for f in fired:
            if f.fired:
                metrics.ticks_fired(f.schedule_id, f.fired)
            if f.missed:
                metrics.ticks_missed(f.schedule_id, f.missed)
                log.warning("schedule %s: %d missed ticks not run", f.schedule_id, f.missed)
            for job in f.created:
                metrics.enqueued(job.queue, job.kind)
                states.add(job.state)
        if JobState.QUEUED in states:  # every engine on this store (they ignore its NOTIFY)
            self.commits.jobs_ready()
        if JobState.SCHEDULED in states:
            self.commits.jobs_scheduled()
        if len(fired) >= BATCH:
            return 0.0
        left = await self.schedules.seconds_to_next()
        if left is None:
            return MAX_SLEEP
        if left <= 0:  # due, yet not fired by this pass: another replica holds it right now
            return LOCKED_RETRY
        return min(MAX_SLEEP, left)
