"""Claim rounds: one claim serves every waiting stream that wants the same queues and kinds.

The streams' free slots are interleaved and sent to PostgreSQL in one `claim_jobs` statement;
job n goes to slot n. A wake-up (engine/wakeups.py jobs_ready) runs one round; a timer bounds how
long a lost notification can delay a job.
"""

from __future__ import annotations

import asyncio
import logging

from jobqueue_grpc._aio import spawn, wait
from jobqueue_grpc.domain.outcomes import LostBecause
from jobqueue_grpc.domain.records import LeasedJob
from jobqueue_grpc.engine.flow import FlowControl
from jobqueue_grpc.engine.loops import report
from jobqueue_grpc.engine.ports import LeasePort
from jobqueue_grpc.engine.settle import Releaser
from jobqueue_grpc.engine.streams import Group, Registry, interleave
from jobqueue_grpc.engine.wakeups import WakeBus, _set_event

log = logging.getLogger(__name__)

CLAIM_MAX = 1000  # jobs per claim statement
# Claim rounds that may run at once. While one round's jobs are turned into messages (Python),
# the next round's statement runs in PostgreSQL, instead of each waiting for the other.
CLAIMERS = 2
IDLE_POLL = 1.0  # seconds: the longest a lost notification can delay a job


class Claimer:
    def __init__(
        self,
        leases: LeasePort,
        registry: Registry,
        bus: WakeBus,
        releaser: Releaser,
        flow: FlowControl,
    ) -> None:
        self.leases = leases
        self.flow = flow  # limited queues go through the flow-controlled claim (engine/flow.py)
        self.registry = registry
        self.bus = bus
        self.releaser = releaser
        self.paused = False  # draining: lease nothing more
        self.stopped = False
        # Clear while a claim round (or a hand-off) runs. Before a stream hears that no more jobs
        # will come (`draining`, or the answer after its own `drain`), a round under way must
        # have pushed what it claimed, so that those jobs arrive first on the stream, not after.
        self.idle = _set_event()
        self._running = 0
        # Hand-off bookkeeping: a claim that came back short records its group as drained at the
        # wake-up generation it started in. A group drained at the current generation has
        # nothing waiting that this replica knows of (engine/handoff.py).
        self.drained: dict[Group, int] = {}

    async def run(self) -> None:
        claim = self.bus.claim
        while not self.stopped:
            woken = await wait(claim.wait(), IDLE_POLL)
            if woken and not claim.is_set():
                continue  # another claim loop took this wake-up: one round serves it
            claim.clear()
            if self.paused or self.stopped:
                continue
            self.begins()
            try:
                if await self.round():
                    claim.set()  # a claim came back full: there may be more
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                report(log, "claim failed; retrying", exc)
                await asyncio.sleep(0.5)
            finally:
                self.ends()

    def begins(self) -> None:
        self._running += 1
        self.idle.clear()

    def ends(self) -> None:
        self._running -= 1
        if self._running == 0:
            self.idle.set()

    async def round(self) -> bool:
        """One claim per group of streams with room; True if any came back full."""
        full = False
        for group, streams in self.registry.groups().items():
            slots = interleave(streams, CLAIM_MAX)
            if not slots:  # another round took the room while this one waited
                continue
            # The room asked for is reserved until the statement returns, so that a round
            # running alongside asks only for what is left.
            for s in slots:
                s.reserved += 1
            generation = self.bus.generation
            try:
                jobs = await self.flow.claim(
                    group[0], group[1], [(s.id, s.worker_id) for s in slots]
                )
            finally:
                for s in slots:
                    s.reserved -= 1
            if len(jobs) < len(slots):
                self.drained[group] = generation
            else:
                self.drained.pop(group, None)
            if jobs:
                self.deliver(jobs)
            full = full or len(jobs) == len(slots)
        return full

    def deliver(self, jobs: list[LeasedJob]) -> None:
        orphans = self.registry.deliver(jobs)
        if orphans:  # the stream closed while the claim ran: release them now
            held = [(j.id, j.lease_token) for j in orphans]
            spawn(self.releaser.release(held, LostBecause.STREAM_CLOSED))

    def forget_group(self, group: Group) -> None:
        """The group's last stream left."""
        self.drained.pop(group, None)
