"""Unique jobs: the rules for EnqueueRequest.unique. No I/O.

A unique job carries a key and the states in which it refuses a duplicate. The store enforces it
with a partial unique index on (unique_key) over the rows whose state is one of their own
unique_states, and ON CONFLICT DO NOTHING: race-free on any number of replicas.

The states always include every unfinished one. Were RUNNING left out, a job could leave the
index when leased, a duplicate come in, and the first job's return to QUEUED (a retry, an expired
lease) collide with it in a statement that must not fail; so only finished states are optional.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from jobqueue_grpc.domain.errors import FieldViolation
from jobqueue_grpc.domain.states import STATES, TERMINAL, JobState
from jobqueue_grpc.domain.validation import IDEMPOTENCY_KEY_MAX

UNFINISHED: tuple[JobState, ...] = tuple(s for s in STATES if s not in TERMINAL)
MIN_PERIOD = 1.0  # seconds
MAX_PERIOD = 366 * 86_400.0
DERIVED_PREFIX = "derived:"


@dataclass(frozen=True, slots=True)
class Unique:
    """A validated `unique`: the key (given or derived), the refusing states (stored values, in
    STATES order), and the window length in seconds, if any."""

    key: str
    states: tuple[str, ...]
    period: float | None

    @property
    def states_text(self) -> str:
        """The states as insert_jobs takes them: comma-separated."""
        return ",".join(self.states)


def derived_key(queue: str, kind: str, payload_json: str) -> str:
    """The key of a job that gives none: its queue, kind and payload (keys sorted, so the same
    object in another key order is the same job)."""
    canonical = json.dumps(
        [queue, kind, json.loads(payload_json)],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return DERIVED_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


def refusing_states(states: Iterable[JobState], period: float | None) -> tuple[str, ...]:
    """The states a duplicate is refused in: those given (which must include UNFINISHED), or by
    default the unfinished ones, and every state when there is a period (one job per window)."""
    chosen = set(states)
    if not chosen:
        chosen = set(STATES) if period is not None else set(UNFINISHED)
    return tuple(s.value for s in STATES if s in chosen)


def check_unique(
    prefix: str, *, key: str, states: Iterable[JobState], period: float | None
) -> list[FieldViolation]:
    """Every problem with one `unique`; `prefix` names it ("unique." or "jobs[3].unique.")."""
    out: list[FieldViolation] = []
    if len(key) > IDEMPOTENCY_KEY_MAX:
        out.append(
            FieldViolation(
                prefix + "key", f"unique key is longer than {IDEMPOTENCY_KEY_MAX} characters"
            )
        )
    if "\x00" in key:
        out.append(FieldViolation(prefix + "key", "unique key contains NUL"))
    if key.startswith(DERIVED_PREFIX):
        out.append(
            FieldViolation(prefix + "key", f"a unique key may not start with {DERIVED_PREFIX!r}")
        )
    given = set(states)
    if given and not given.issuperset(UNFINISHED):
        missing = ", ".join(s.name for s in UNFINISHED if s not in given)
        out.append(
            FieldViolation(
                prefix + "states",
                f"states must include every unfinished state (missing {missing}); "
                "list SUCCEEDED, FAILED or CANCELLED to refuse duplicates of finished jobs too",
            )
        )
    if period is not None and not MIN_PERIOD <= period <= MAX_PERIOD:
        out.append(FieldViolation(prefix + "period", "period must be between 1 s and 366 days"))
    return out
