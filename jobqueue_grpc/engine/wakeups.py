"""The wake-up bus: every reason for the engine to act, one name each.

| event            | who raises it                                        | who wakes       |
| ---------------- | ---------------------------------------------------- | --------------- |
| jobs_ready       | an enqueue or requeue or resume committed here        | claim loops     |
|                  | (store.commits), a NOTIFY from another replica        |                 |
|                  | (Listener), a promotion, a reaped lease, a stream     |                 |
|                  | opened or with room again, a claim that came back full|                 |
| jobs_scheduled   | an enqueue with a future run_at committed here        | scheduler       |
| leases_released  | a lease left a stream (settled, expired, released)    | drain waits     |
| cancel_requested | NOTIFY from CancelJob on any replica (Listener)       | stream registry |
| schedules_changed| a schedule created, updated or resumed here           | schedule loop   |
| jobs_changed     | NOTIFY from the jobs triggers on any replica, while   | watches         |
|                  | this one has watchers (Listener); None: the link was  |                 |
|                  | down, anything may have changed                       |                 |

A new wake-up source calls one of these; a new event gets a name here and a waiter in the room
that acts on it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable


def _set_event() -> asyncio.Event:
    e = asyncio.Event()
    e.set()
    return e


class WakeBus:
    def __init__(self) -> None:
        self.claim = asyncio.Event()  # set: a claim round should run
        self.schedule = asyncio.Event()  # set: the scheduler should look again now
        self.released = asyncio.Event()  # set whenever a lease leaves a stream
        self.schedules = asyncio.Event()  # set: the schedule loop should look again now
        # Bumped by every jobs_ready: a claim that came back short records the generation it
        # started in (engine/handoff.py), so a later wake-up tells that it may be stale.
        self.generation = 0
        self.on_cancel: Callable[[uuid.UUID, uuid.UUID], None] = lambda _job, _stream: None
        self.on_changes: Callable[[list[uuid.UUID] | None], None] = lambda _ids: None

    def jobs_ready(self, _queue: str = "") -> None:
        self.generation += 1
        self.claim.set()

    def jobs_scheduled(self) -> None:
        self.schedule.set()

    def leases_released(self) -> None:
        self.released.set()
        self.schedules.set()

    def schedules_changed(self) -> None:
        self.schedules.set()

    def cancel_requested(self, job_id: uuid.UUID, stream_id: uuid.UUID) -> None:
        self.on_cancel(job_id, stream_id)

    def jobs_changed(self, ids: list[uuid.UUID] | None) -> None:
        self.on_changes(ids)

    def stop(self) -> None:
        """Lets every waiter run once more (to see that the engine stopped)."""
        self.claim.set()
        self.schedule.set()
        self.released.set()
        self.schedules.set()
