"""Job states and the transitions between them."""

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


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
# States a job waits in before a worker leases it; the claim takes from these.
WAITING = frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.RETRYING})


class CancelOutcome(enum.Enum):
    CANCELLED = "cancelled"
    CANCEL_REQUESTED = "cancel_requested"


def cancel_outcome(state: JobState) -> CancelOutcome | None:
    """What CancelJob does to a job in `state`; None means it is terminal and refused."""
    if state in WAITING:
        return CancelOutcome.CANCELLED
    if state is JobState.RUNNING:
        return CancelOutcome.CANCEL_REQUESTED
    return None
