"""The engine: one replica's dispatch, wired from its rooms, with its lifecycle.

    streams.py      the stream registry and flow control (room per stream, groups, delivery)
    claims.py       claim rounds
    flow.py         flow control: limited queues' claims (store/limits.py)
    handoff.py      new jobs straight to idle streams
    intake.py       what workers send: outcomes, extensions, progress
    settle.py       outcomes group-committed; leases ended without one released
    enqueue.py      enqueues group-committed (and handed off)
    maintenance/    scheduler, reaper, pruner, schedules (periodic jobs)
    watches.py      watchers of job changes (WatchJob, WatchJobs) and their fan-out
    wakeups.py      the wake-up bus (in-process commits and LISTEN feed it)
    events.py       the plain values a stream sends and receives (api/lease.py: the wire)

It takes and gives domain values and never sees protobuf.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from jobqueue_grpc._aio import wait
from jobqueue_grpc.config import Settings
from jobqueue_grpc.domain.errors import Unavailable
from jobqueue_grpc.domain.outcomes import LostBecause, RetryDefaults
from jobqueue_grpc.engine import events as ev
from jobqueue_grpc.engine.claims import CLAIMERS, Claimer
from jobqueue_grpc.engine.enqueue import Enqueuer
from jobqueue_grpc.engine.flow import FlowControl
from jobqueue_grpc.engine.handoff import HandOffs
from jobqueue_grpc.engine.intake import Intake
from jobqueue_grpc.engine.maintenance.pruner import Pruner
from jobqueue_grpc.engine.maintenance.reaper import Reaper
from jobqueue_grpc.engine.maintenance.scheduler import Scheduler
from jobqueue_grpc.engine.maintenance.schedules import ScheduleLoop
from jobqueue_grpc.engine.ports import StorePort
from jobqueue_grpc.engine.settle import Releaser, Settler
from jobqueue_grpc.engine.streams import Registry, Stream
from jobqueue_grpc.engine.wakeups import WakeBus
from jobqueue_grpc.engine.watches import Watches

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 15.0  # seconds of quiet on a stream before the server sends a heartbeat


class Engine:
    def __init__(self, store: StorePort, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        leases = store.leases
        defaults = RetryDefaults(settings.backoff_base, settings.backoff_cap)
        self.bus = bus = WakeBus()
        self.registry = registry = Registry(bus)
        self.releaser = Releaser(leases, defaults)
        self.flow = FlowControl(leases, store.limits, bus)
        self.claimer = Claimer(leases, registry, bus, self.releaser, self.flow)
        self.handoffs = HandOffs(leases, registry, bus, self.claimer, store.commits, self.flow)
        self.settler = Settler(leases, registry, bus)
        self.intake = Intake(
            leases, registry, bus, self.settler, defaults, settings.payload_max_bytes
        )
        self.enqueuer = Enqueuer(store.jobs, store.commits, self.handoffs)
        self.scheduler = Scheduler(leases, bus, store.commits)
        self.reaper = Reaper(self.releaser, registry, bus, settings.reaper_interval)
        self.pruner = Pruner(store.retention, settings)
        self.schedules = ScheduleLoop(
            store.schedules, bus, store.commits, settings.schedule_misfire_grace
        )
        self.listener = store.listener(
            on_jobs=bus.jobs_ready,
            on_cancel=bus.cancel_requested,
            on_limits=self.flow.changed,
            on_changes=bus.jobs_changed,
        )
        self.watches = Watches(
            self.listener,
            per_connection=settings.max_watches_per_connection,
            total=settings.max_watches,
        )
        bus.on_changes = self.watches.changed
        self.draining = False
        self._stopped = False
        self._tasks: list[asyncio.Task[None]] = []
        store.commits.ready.append(bus.jobs_ready)
        store.commits.scheduled.append(bus.jobs_scheduled)

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        loops: list[tuple[Coroutine[Any, Any, None], str]] = [
            *((self.claimer.run(), f"claim-{i}") for i in range(CLAIMERS)),
            (self.scheduler.run(), "scheduler"),
            (self.reaper.run(), "reaper"),
            (self.pruner.run(), "pruner"),
            (self.schedules.run(), "schedules"),
            (self.listener.run(), "listen"),
        ]
        for coro, name in loops:
            self._tasks.append(asyncio.create_task(coro, name=f"engine-{name}"))

    async def drain(self, grace: float) -> None:
        """Shutdown: lease nothing more, tell every stream, wait up to `grace` for outcomes."""
        self.draining = self.claimer.paused = True
        self.watches.close()  # watchers go to another replica now
        await wait(self.claimer.idle.wait(), 5.0)
        for s in self.registry:
            s.send(ev.Draining(grace))
        deadline = time.monotonic() + grace
        while self.registry.holding():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.bus.released.clear()
            await wait(self.bus.released.wait(), left)
        await wait(self.settler.idle(), max(0.1, deadline - time.monotonic()))

    async def stop(self) -> None:
        """Releases whatever is still leased here into the retry path, and stops the loops."""
        self.draining = self.claimer.paused = True
        self.watches.close()
        streams = list(self.registry)
        for s in streams:
            s.close()
        held = [(le.job.id, le.job.lease_token) for s in streams for le in s.leases.values()]
        if held:
            try:
                await self.releaser.release(held, LostBecause.SERVER_SHUTDOWN)
            except Exception:  # the reaper of another replica (or ours, later) will expire them
                log.exception("could not release %d leases at shutdown", len(held))
        for s in streams:
            self.registry.released(len(s.leases))
            s.leases.clear()
        self._stopped = self.claimer.stopped = self.scheduler.stopped = self.reaper.stopped = True
        self.schedules.stopped = True
        self.settler.stopped = True
        commits = self.store.commits
        with contextlib.suppress(ValueError):  # stopped twice
            commits.ready.remove(self.bus.jobs_ready)
            commits.scheduled.remove(self.bus.jobs_scheduled)
        self.flow.stop()
        self.bus.stop()
        await self.listener.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.wait(self._tasks, timeout=5)

    # -- streams (api/lease.py) -------------------------------------------------------------------
    def open_stream(
        self, worker_id: str, queues: Sequence[str], kinds: Sequence[str] | None, max_in_flight: int
    ) -> Stream:
        if self.draining:
            raise Unavailable("the server is draining; reconnect elsewhere", reason="DRAINING")
        s = Stream(
            worker_id=worker_id,
            queues=tuple(sorted(set(queues))),
            kinds=tuple(sorted(set(kinds))) if kinds else None,
            max_in_flight=max_in_flight,
        )
        self.registry.add(s)
        return s

    async def close_stream(self, s: Stream) -> None:
        """The stream ended: every job still leased on it goes into the retry path at once."""
        if not self.registry.remove(s):
            return
        if not self.registry.has_group(s.group):
            self.claimer.forget_group(s.group)
        s.close()
        await wait(s.settled.wait(), 10.0)  # this stream's outcomes first, then release the rest
        if s.leases:
            held = [(le.job.id, le.job.lease_token) for le in s.leases.values()]
            await self.releaser.release(held, LostBecause.STREAM_CLOSED)
            self.registry.released(len(s.leases))
            s.leases.clear()

    async def drain_stream(self, s: Stream) -> None:
        """The worker asked to drain. Requests are handled in order: anything it sends after
        (the SDK sends a heartbeat) is answered after every job this stream will ever get."""
        s.draining = True
        await wait(self.claimer.idle.wait(), 5.0)

    def heartbeat(self, s: Stream) -> None:
        s.send(ev.HEARTBEAT)
