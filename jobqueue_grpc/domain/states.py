"""Job states and the one table of legal transitions between them.

The SQL statements in store/sql/ apply these rules in bulk (a `CASE` per statement, where they are
fast); tests/test_state_machine.py runs every (state, event) pair through both and checks that
they agree. A new way for a job to change state starts here.
"""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    """Stored in `jobs.state` as these lowercase strings."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


# Every state, in the order the API lists them (QueueCounts, the CLI, the queue SQL).
STATES: tuple[JobState, ...] = tuple(JobState)
TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
# States a job waits in before a worker leases it; the claim takes from QUEUED only (the
# scheduler promotes the other two when due).
WAITING = frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.RETRYING})


class Event(enum.StrEnum):
    """What can happen to a job. Each is applied by one statement (or a few) of the store."""

    ENQUEUE = "enqueue"  # insert_jobs / insert_job_batch: due now
    ENQUEUE_LATER = "enqueue_later"  # the same with run_at in the future
    HAND_OFF = "hand_off"  # insert_jobs with a waiting stream's slot: inserted leased
    PROMOTE = "promote"  # promote_due_jobs: a parked job's time has come
    CLAIM = "claim"  # claim_jobs
    UNLEASE = "unlease"  # unlease_handed_off_jobs: a hand-off that was never pushed
    COMPLETE = "complete"  # complete_jobs
    RETRY = "retry"  # fail_jobs with attempts left (worker failure, expiry, lost stream)
    FAIL = "fail"  # fail_jobs, final: dead-lettered
    WORKER_CANCELLED = "worker_cancelled"  # cancel_running_jobs: the worker stopped it
    CANCEL = "cancel"  # CancelJob on a waiting job (a running one: REQUEST_CANCEL)
    REQUEST_CANCEL = "request_cancel"  # CancelJob on a running job: flagged, the worker told
    REQUEUE = "requeue"  # requeue_dead_letter(s): back from the dead-letter queue


_RUNNING = frozenset({JobState.RUNNING})

# event -> (states it applies to, the state it leads to). None: a job that does not exist yet.
TRANSITIONS: dict[Event, tuple[frozenset[JobState | None], JobState]] = {
    Event.ENQUEUE: (frozenset({None}), JobState.QUEUED),
    Event.ENQUEUE_LATER: (frozenset({None}), JobState.SCHEDULED),
    Event.HAND_OFF: (frozenset({None}), JobState.RUNNING),
    Event.PROMOTE: (frozenset({JobState.SCHEDULED, JobState.RETRYING}), JobState.QUEUED),
    Event.CLAIM: (frozenset({JobState.QUEUED}), JobState.RUNNING),
    Event.UNLEASE: (_RUNNING, JobState.QUEUED),
    Event.COMPLETE: (_RUNNING, JobState.SUCCEEDED),
    Event.RETRY: (_RUNNING, JobState.RETRYING),
    Event.FAIL: (_RUNNING, JobState.FAILED),
    Event.WORKER_CANCELLED: (_RUNNING, JobState.CANCELLED),
    Event.CANCEL: (frozenset(WAITING), JobState.CANCELLED),
    Event.REQUEST_CANCEL: (_RUNNING, JobState.RUNNING),
    # a pruned failed row is recreated by the requeue (the dead letter holds the whole job)
    Event.REQUEUE: (frozenset({JobState.FAILED, None}), JobState.QUEUED),
}


class IllegalTransition(ValueError):
    pass


def allowed(state: JobState | None, event: Event) -> bool:
    return state in TRANSITIONS[event][0]


def next_state(state: JobState | None, event: Event, *, cancel_requested: bool = False) -> JobState:
    """The state a job in `state` moves to on `event`.

    An attempt that ends in failure (RETRY, FAIL) while a cancel was requested ends CANCELLED:
    the cancel wins over both the retry and the dead-letter queue.
    """
    sources, target = TRANSITIONS[event]
    if state not in sources:
        raise IllegalTransition(f"{event} does not apply to a {state or 'new'} job")
    if cancel_requested and event in (Event.RETRY, Event.FAIL):
        return JobState.CANCELLED
    return target


def enqueue_event(*, due: bool, handed_off: bool) -> Event:
    """How a new job enters: scheduled when not due, else leased when handed off, else queued."""
    if not due:
        return Event.ENQUEUE_LATER
    return Event.HAND_OFF if handed_off else Event.ENQUEUE


class CancelOutcome(enum.Enum):
    CANCELLED = "cancelled"
    CANCEL_REQUESTED = "cancel_requested"


def cancel_outcome(state: JobState) -> CancelOutcome | None:
    """What CancelJob does to a job in `state`; None means it is terminal and refused."""
    if allowed(state, Event.CANCEL):
        return CancelOutcome.CANCELLED
    if allowed(state, Event.REQUEST_CANCEL):
        return CancelOutcome.CANCEL_REQUESTED
    return None


def cancellable_states(state: JobState | None = None) -> list[JobState]:
    """The states CancelJobs acts on: those CancelJob cancels or asks a worker to stop, limited
    to `state` when one is given (a terminal one: none)."""
    out = [s for s in STATES if allowed(s, Event.CANCEL) or allowed(s, Event.REQUEST_CANCEL)]
    return [s for s in out if state is None or s is state]
