"""Retry decisions: decorrelated jitter, failure classes, dead-lettering."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from jobqueue_grpc.domain.states import JobState


class FailureClass(enum.Enum):
    RETRY = "retry"
    DO_NOT_RETRY = "do_not_retry"
    RETRY_AFTER = "retry_after"


def decorrelated_jitter(
    base: float, cap: float, prev_sleep: float | None, rng: random.Random | None = None
) -> float:
    """sleep = min(cap, random(base, prev_sleep * 3)) — AWS's "decorrelated jitter".

    The first retry (no previous sleep) draws from [base, base * 3].
    """
    r = rng or random
    prev = prev_sleep if prev_sleep and prev_sleep > 0 else base
    upper = max(base, prev * 3)
    return min(cap, r.uniform(base, upper))


@dataclass(frozen=True)
class FailureDecision:
    state: JobState  # RETRYING or FAILED
    delay: float  # seconds until the next attempt (0 when FAILED)
    dead_letter: bool


def decide_failure(
    *,
    attempt: int,
    max_attempts: int,
    failure_class: FailureClass,
    base: float,
    cap: float,
    prev_sleep: float | None,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> FailureDecision:
    """What happens to a job whose attempt number `attempt` just failed."""
    if failure_class is FailureClass.DO_NOT_RETRY or attempt >= max_attempts:
        return FailureDecision(JobState.FAILED, 0.0, dead_letter=True)
    if failure_class is FailureClass.RETRY_AFTER and retry_after is not None:
        return FailureDecision(JobState.RETRYING, max(0.0, retry_after), dead_letter=False)
    return FailureDecision(
        JobState.RETRYING, decorrelated_jitter(base, cap, prev_sleep, rng), dead_letter=False
    )
