"""Schedules: validation and the tick computation, as pure functions. No I/O.

A schedule's timing is a cron expression read in an IANA zone (parsed and stepped by cronsim, a
maintained library; the usual @-forms are spelled out here) or a fixed interval. Ticks are
computed from the previous tick, never from a running iterator, so any replica, after any
restart, computes the same ones. Daylight saving: cronsim steps wall-clock time in the zone; a
wall time that a spring-forward skips fires at the first instant after the gap, and one that a
fall-back repeats fires once (at its first occurrence). Expressions that fire more often than
hourly fire at every real instant that matches, so an hour that occurs twice has its ticks twice.
"""

from __future__ import annotations

import enum
import json
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from jobqueue_grpc.domain.errors import FieldViolation
from jobqueue_grpc.domain.jobs import NewJob
from jobqueue_grpc.domain.unique import Unique
from jobqueue_grpc.domain.validation import QUEUE_RE, quote

DEFAULT_TIMEZONE = "UTC"
MIN_EVERY = 1.0  # seconds
MAX_EVERY = 366 * 86_400.0
MAX_CATCH_UP = 1000
# Ticks looked at one by one when a schedule is behind; past this the latest are found backwards
# and the count of missed ticks is a lower bound.
SCAN_MAX = 10_000
# On-time ticks one pass fires at most (a schedule every second, seconds behind).
ON_TIME_MAX = 100

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class Missed(enum.StrEnum):
    """What a schedule does with ticks that fell while no replica ran it (stored values)."""

    SKIP = "skip"
    RUN_ONCE = "run_once"
    CATCH_UP = "catch_up"


@dataclass(frozen=True, slots=True)
class Timing:
    cron: str | None  # as given (an @-form stays one)
    every: float | None  # seconds
    timezone: str = DEFAULT_TIMEZONE


@dataclass(frozen=True, slots=True)
class TickPlan:
    """What one pass does with a due schedule: enqueue a job per tick in `fire` (oldest first),
    count `missed` ticks as missed, and set next_run_at."""

    fire: list[datetime]
    missed: int
    next_run_at: datetime


# -- validation ---------------------------------------------------------------------------------
def id_violation(field: str, schedule_id: str) -> FieldViolation | None:
    if QUEUE_RE.fullmatch(schedule_id):
        return None
    return FieldViolation(field, f"schedule id {quote(schedule_id)} must match [a-z0-9_.-]{{1,64}}")


def zone(name: str) -> ZoneInfo | None:
    """The IANA zone, or None when there is no such zone."""
    if not name or len(name) > 64 or "\x00" in name or name.startswith(("/", ".")):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def expand(cron: str) -> str:
    return MACROS.get(cron.strip().lower(), cron)


def check_timing(prefix: str, timing: Timing) -> list[FieldViolation]:
    """Every problem with a schedule's timing, each naming its field ("schedule.cron")."""
    out: list[FieldViolation] = []
    if (timing.cron is None) == (timing.every is None):
        out.append(FieldViolation(prefix + "cron", "exactly one of cron and every is required"))
    tz = zone(timing.timezone)
    if tz is None:
        out.append(
            FieldViolation(
                prefix + "timezone",
                f"timezone {quote(timing.timezone)} is not an IANA zone name (like Europe/Berlin)",
            )
        )
    if timing.cron is not None:
        problem = _cron_problem(timing.cron, tz or UTC)
        if problem:
            out.append(FieldViolation(prefix + "cron", problem))
    if timing.every is not None and not MIN_EVERY <= timing.every <= MAX_EVERY:
        out.append(FieldViolation(prefix + "every", "every must be between 1 s and 366 days"))
    return out


def _cron_problem(cron: str, tz: ZoneInfo | Any) -> str | None:
    if len(cron) > 256 or "\x00" in cron:
        return "cron expression is too long"
    if cron.strip().startswith("@") and cron.strip().lower() not in MACROS:
        return f"cron {quote(cron)}: the @-forms are {', '.join(MACROS)}"
    try:
        next(CronSim(expand(cron), datetime.now(tz)))
    except CronSimError as exc:
        return f"cron {quote(cron)}: {exc}"
    except StopIteration:
        return f"cron {quote(cron)} never fires"
    return None


def check_missed(prefix: str, missed: Missed, catch_up_max: int) -> list[FieldViolation]:
    if missed is Missed.CATCH_UP and not 1 <= catch_up_max <= MAX_CATCH_UP:
        return [
            FieldViolation(
                prefix + "catch_up_max",
                f"catch_up_max must be 1..{MAX_CATCH_UP} with MISSED_TICK_POLICY_CATCH_UP",
            )
        ]
    if missed is not Missed.CATCH_UP and catch_up_max:
        return [
            FieldViolation(
                prefix + "catch_up_max", "catch_up_max goes with MISSED_TICK_POLICY_CATCH_UP only"
            )
        ]
    return []


# -- ticks --------------------------------------------------------------------------------------
def next_tick(timing: Timing, after: datetime) -> datetime:
    """The first tick strictly after `after` (aware), in UTC. An `every` schedule has no
    calendar: its ticks are the previous one plus the interval (see first_tick)."""
    if timing.every is not None:
        return (after + timedelta(seconds=timing.every)).astimezone(UTC)
    assert timing.cron is not None
    tz = ZoneInfo(timing.timezone)
    return next(CronSim(expand(timing.cron), after.astimezone(tz))).astimezone(UTC)


def first_tick(timing: Timing, now: datetime) -> datetime:
    """The next_run_at of a schedule created (or retimed, or resumed) at `now`."""
    return next_tick(timing, now)


def _latest_before(timing: Timing, now: datetime, since: datetime, n: int) -> list[datetime]:
    """The latest `n` cron ticks at or before `now` and at or after `since`, oldest first."""
    assert timing.cron is not None
    tz = ZoneInfo(timing.timezone)
    out: list[datetime] = []
    it = CronSim(expand(timing.cron), (now + timedelta(microseconds=1)).astimezone(tz), True)
    for t in it:
        tick = t.astimezone(UTC)
        if tick < since or len(out) == n:
            break
        out.append(tick)
    return out[::-1]


def due_ticks(
    timing: Timing, next_run_at: datetime, now: datetime, keep: int
) -> tuple[list[datetime], int]:
    """The latest `keep` ticks from next_run_at up to `now` (oldest first), and how many ticks
    are due in all (a lower bound when more than SCAN_MAX cron ticks are)."""
    if next_run_at > now:
        return [], 0
    if timing.every is not None:
        step = timedelta(seconds=timing.every)
        total = int((now - next_run_at) / step) + 1
        first = max(0, total - keep)
        return [next_run_at + step * i for i in range(first, total)], total
    latest: deque[datetime] = deque(maxlen=keep)
    tick, total = next_run_at, 0
    while tick <= now:
        latest.append(tick)
        total += 1
        if total >= SCAN_MAX:  # far behind: take the latest ones backwards from now
            back = _latest_before(timing, now, tick, keep)
            return back, total + max(0, len(back) - 1)
        tick = next_tick(timing, tick)
    return list(latest), total


def plan(
    timing: Timing,
    missed: Missed,
    catch_up_max: int,
    next_run_at: datetime,
    now: datetime,
    grace: float,
) -> TickPlan:
    """What to do with a schedule whose next_run_at is due at `now`.

    A tick at most `grace` seconds old is on time: it fires, whatever the policy (a loop a little
    late, or a replica that took over a moment after another died, loses nothing). Older ticks
    are missed, and the policy says which of them fire anyway: SKIP none, RUN_ONCE the latest
    (one job for all of them), CATCH_UP the latest `catch_up_max`. The new next_run_at is the
    first tick after `now`.
    """
    ticks, total = due_ticks(timing, next_run_at, now, max(catch_up_max, 1) + ON_TIME_MAX)
    if not ticks:
        return TickPlan([], 0, next_run_at)
    nxt = next_tick(timing, ticks[-1])
    limit = timedelta(seconds=grace)
    on_time = [t for t in ticks if now - t <= limit][-ON_TIME_MAX:]
    late = [t for t in ticks if now - t > limit]
    if missed is Missed.CATCH_UP:
        chosen = late[-catch_up_max:] if catch_up_max else []
    elif missed is Missed.RUN_ONCE:
        chosen = late[-1:]
    else:
        chosen = []
    fire = chosen + on_time
    return TickPlan(fire, total - len(fire), nxt)


def tick_key(schedule_id: str, tick: datetime) -> str:
    """The idempotency key of a tick's job: one job per (schedule, tick), whatever happens."""
    return f"schedule:{schedule_id}:{tick.astimezone(UTC).isoformat().replace('+00:00', 'Z')}"


def trigger_key(schedule_id: str, at: datetime) -> str:
    return f"schedule:{schedule_id}:trigger:{at.astimezone(UTC).isoformat().replace('+00:00', 'Z')}"


# -- the job template ---------------------------------------------------------------------------
def template_json(job: NewJob) -> str:
    """A validated NewJob (no run_at, no idempotency key) as the schedules table keeps it."""
    u = job.unique
    return json.dumps(
        {
            "queue": job.queue,
            "kind": job.kind,
            "payload": json.loads(job.payload_json),
            "priority": job.priority,
            "max_attempts": job.max_attempts,
            "lease_seconds": job.lease_seconds,
            "backoff_base": job.backoff_base,
            "backoff_cap": job.backoff_cap,
            "unique": None
            if u is None
            else {"key": u.key, "states": list(u.states), "period": u.period},
            "metadata": json.loads(job.metadata_json) if job.metadata_json else None,
            "concurrency_key": job.concurrency_key,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def template_job(text: str, *, run_at: datetime | None, key: str | None) -> NewJob:
    """The job one tick enqueues: the template, at `run_at`, with the tick's idempotency key."""
    t = json.loads(text)
    u = t.get("unique")
    labels = t.get("metadata")  # absent from templates stored before metadata existed
    return NewJob(
        queue=t["queue"],
        kind=t["kind"],
        payload_json=json.dumps(t["payload"], separators=(",", ":"), ensure_ascii=False),
        priority=t["priority"],
        max_attempts=t["max_attempts"],
        run_at=run_at,
        idempotency_key=key,
        lease_seconds=t["lease_seconds"],
        backoff_base=t["backoff_base"],
        backoff_cap=t["backoff_cap"],
        unique=None if u is None else Unique(u["key"], tuple(u["states"]), u["period"]),
        metadata_json=json.dumps(labels, separators=(",", ":"), ensure_ascii=False)
        if labels
        else None,
        concurrency_key=t.get("concurrency_key"),  # absent from templates stored before it
    )
