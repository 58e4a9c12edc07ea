"""The state machine has one home (domain/states.py); the SQL applies it in bulk. Every
(state, event) pair runs through both here: the statement the store uses for the event, on a job
put in that state, must leave it where `next_state` says, or untouched where the domain says the
event does not apply.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from jobqueue_grpc.domain.errors import FailedPrecondition
from jobqueue_grpc.domain.jobs import NewJob
from jobqueue_grpc.domain.outcomes import Failure, error_json
from jobqueue_grpc.domain.states import (
    STATES,
    TRANSITIONS,
    Event,
    IllegalTransition,
    JobState,
    allowed,
    cancel_outcome,
    cancellable_states,
    enqueue_event,
    next_state,
)
from jobqueue_grpc.store import Store

STREAM = uuid.uuid4()


def new_job(run_at: datetime | None = None) -> NewJob:
    return NewJob("sm", "noop", "{}", 0, 1, run_at, None, 30.0, None, None)


async def job_in(
    store: Store, db: asyncpg.Connection, state: JobState, *, cancel_requested: bool = False
) -> tuple[uuid.UUID, uuid.UUID]:
    """A job put in `state` as the engine would leave it there; (id, lease token or a stranger)."""
    [(row, _)] = (await store.jobs.insert([new_job()])).jobs
    running = state is JobState.RUNNING
    token = await db.fetchval(
        """UPDATE jobqueue.jobs
           SET state = $2, cancel_requested = $3, run_at = now() - interval '1 hour',
               attempt = CASE WHEN $4 THEN 1 ELSE attempt END,
               lease_token = CASE WHEN $4 THEN gen_random_uuid() END,
               lease_expires_at = CASE WHEN $4 THEN now() + interval '1 minute' END,
               stream_id = CASE WHEN $4 THEN $5::uuid END
           WHERE id = $1 RETURNING lease_token""",
        row.id,
        state.value,
        cancel_requested,
        running,
        STREAM,
    )
    return row.id, token or uuid.uuid4()


async def state_of(db: asyncpg.Connection, job_id: uuid.UUID) -> JobState | None:
    value = await db.fetchval("SELECT state FROM jobqueue.jobs WHERE id = $1", job_id)
    return JobState(value) if value is not None else None


Apply = Callable[[Store, uuid.UUID, uuid.UUID], Awaitable[object]]


def fail(next_: JobState) -> Apply:
    async def apply(store: Store, job_id: uuid.UUID, token: uuid.UUID) -> object:
        f = Failure(job_id, token, next_, 1.0, error_json("boom", "worker"))
        return await store.leases.settle([], [], [f])

    return apply


# Each event on a job that exists, through the store call the engine or the api makes for it.
APPLY: dict[Event, Apply] = {
    Event.PROMOTE: lambda store, _id, _token: store.leases.promote_due(1000),
    Event.CLAIM: lambda store, _id, _token: store.leases.claim(["sm"], None, [(STREAM, "w")]),
    Event.UNLEASE: lambda store, job_id, _token: store.leases.unlease_handed_off(
        [(job_id, STREAM)]
    ),
    Event.COMPLETE: lambda store, job_id, token: store.leases.settle(
        [(job_id, token, None)], [], []
    ),
    Event.RETRY: fail(JobState.RETRYING),
    Event.FAIL: fail(JobState.FAILED),
    Event.WORKER_CANCELLED: lambda store, job_id, token: store.leases.settle(
        [], [(job_id, token)], []
    ),
}


# (state, event, cancel requested): only a running job carries a cancel request
CASES = [(s, e, False) for s in STATES for e in APPLY] + [
    (JobState.RUNNING, e, True) for e in APPLY
]


@pytest.mark.parametrize(("state", "event", "cancel_requested"), CASES)
async def test_each_statement_agrees_with_the_domain(
    store: Store, db: asyncpg.Connection, state: JobState, event: Event, cancel_requested: bool
) -> None:
    job_id, token = await job_in(store, db, state, cancel_requested=cancel_requested)
    await APPLY[event](store, job_id, token)
    after = await state_of(db, job_id)
    if allowed(state, event):
        assert after == next_state(state, event, cancel_requested=cancel_requested)
    else:
        assert after == state  # the statement left it alone
        with pytest.raises(IllegalTransition):
            next_state(state, event)


@pytest.mark.parametrize("state", STATES)
async def test_cancel_job_agrees_with_the_domain(
    store: Store, db: asyncpg.Connection, state: JobState
) -> None:
    job_id, _ = await job_in(store, db, state)
    expected = cancel_outcome(state)
    if expected is None:
        with pytest.raises(FailedPrecondition):
            await store.jobs.cancel(job_id)
        assert await state_of(db, job_id) == state
        return
    _, outcome = await store.jobs.cancel(job_id)
    assert outcome is expected
    event = Event.CANCEL if allowed(state, Event.CANCEL) else Event.REQUEST_CANCEL
    assert await state_of(db, job_id) == next_state(state, event)
    flagged = await db.fetchval("SELECT cancel_requested FROM jobqueue.jobs WHERE id = $1", job_id)
    assert flagged is (event is Event.REQUEST_CANCEL)


@pytest.mark.parametrize("state", STATES)
async def test_cancel_jobs_agrees_with_the_domain(
    store: Store, db: asyncpg.Connection, state: JobState
) -> None:
    """CancelJobs' bulk statement (cancel_jobs_chunk) applies CANCEL and REQUEST_CANCEL as
    CancelJob does, and leaves a terminal job alone."""
    job_id, _ = await job_in(store, db, state)
    out = await store.jobs.cancel_many(
        queue="sm", kind=None, states=cancellable_states(), created_before=None, dry_run=False
    )
    expected = cancel_outcome(state)
    if expected is None:
        assert (out.matched, await state_of(db, job_id)) == (0, state)
        return
    event = Event.CANCEL if allowed(state, Event.CANCEL) else Event.REQUEST_CANCEL
    assert await state_of(db, job_id) == next_state(state, event)
    assert (out.cancelled, out.cancel_requested) == ((1, 0) if event is Event.CANCEL else (0, 1))


@pytest.mark.parametrize("due", [True, False])
async def test_unique_insert_agrees_with_the_domain(store: Store, due: bool) -> None:
    run_at = None if due else datetime.now(UTC) + timedelta(hours=1)
    [(row, created)] = await store.jobs.insert_unique([new_job(run_at)])
    assert created
    assert row.state == next_state(None, enqueue_event(due=due, handed_off=False))


@pytest.mark.parametrize(("due", "handed_off"), [(True, False), (False, False), (True, True)])
async def test_insert_agrees_with_the_domain(store: Store, due: bool, handed_off: bool) -> None:
    run_at = None if due else datetime.now(UTC) + timedelta(hours=1)
    slot = [(STREAM, "w")] if handed_off else None
    out = await store.jobs.insert([new_job(run_at)], slot)
    [(row, created)] = out.jobs
    assert created
    assert row.state == next_state(None, enqueue_event(due=due, handed_off=handed_off))
    assert len(out.leased) == int(handed_off)


@pytest.mark.parametrize("pruned", [False, True])
async def test_requeue_agrees_with_the_domain(
    store: Store, db: asyncpg.Connection, pruned: bool
) -> None:
    job_id, token = await job_in(store, db, JobState.RUNNING)
    await fail(JobState.FAILED)(store, job_id, token)  # dead-lettered
    if pruned:
        await db.execute("DELETE FROM jobqueue.jobs WHERE id = $1", job_id)
    before = await state_of(db, job_id)
    assert allowed(before, Event.REQUEUE)
    job = await store.dead_letters.requeue(job_id)
    assert job.state == next_state(before, Event.REQUEUE) == await state_of(db, job_id)


def test_every_event_is_exercised_against_the_sql() -> None:
    covered = set(APPLY) | {
        Event.CANCEL,
        Event.REQUEST_CANCEL,
        Event.ENQUEUE,
        Event.ENQUEUE_LATER,
        Event.HAND_OFF,
        Event.REQUEUE,
    }
    assert covered == set(TRANSITIONS)
