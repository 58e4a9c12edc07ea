"""ScheduleService: periodic jobs. Each method: validate (domain/schedules.py), one store call,
convert. Ticks are fired by the engine's schedule loop (engine/maintenance/schedules.py); a
schedule created, changed or resumed here wakes it (the bus's schedules_changed)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from jobqueue_grpc import metrics
from jobqueue_grpc._durations import duration
from jobqueue_grpc._durations import seconds as secs
from jobqueue_grpc.api import convert
from jobqueue_grpc.api.jobs import limits_of, page_size
from jobqueue_grpc.config import Settings
from jobqueue_grpc.domain import schedules as sched
from jobqueue_grpc.domain.errors import FieldViolation, InvalidArgument
from jobqueue_grpc.domain.jobs import Limits, NewJob
from jobqueue_grpc.domain.records import ScheduleRecord
from jobqueue_grpc.domain.states import JobState
from jobqueue_grpc.domain.validation import raise_if
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2
from jobqueue_grpc.gen.jobqueue.v1 import schedule_service_pb2 as pb
from jobqueue_grpc.gen.jobqueue.v1 import schedule_service_pb2_grpc as pb_grpc
from jobqueue_grpc.store import Store

Ctx = grpc.aio.ServicerContext[Any, Any]

MISSED_FROM_PROTO = {
    pb.MISSED_TICK_POLICY_UNSPECIFIED: sched.Missed.SKIP,
    pb.MISSED_TICK_POLICY_SKIP: sched.Missed.SKIP,
    pb.MISSED_TICK_POLICY_RUN_ONCE: sched.Missed.RUN_ONCE,
    pb.MISSED_TICK_POLICY_CATCH_UP: sched.Missed.CATCH_UP,
}
MISSED_TO_PROTO = {
    sched.Missed.SKIP: pb.MISSED_TICK_POLICY_SKIP,
    sched.Missed.RUN_ONCE: pb.MISSED_TICK_POLICY_RUN_ONCE,
    sched.Missed.CATCH_UP: pb.MISSED_TICK_POLICY_CATCH_UP,
}
_STATE_TO_PROTO = convert.STATE_TO_PROTO


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A Schedule message's writable fields, validated."""

    id: str
    timing: sched.Timing
    template: NewJob
    paused: bool
    missed: sched.Missed
    catch_up_max: int


# -- proto -> domain ----------------------------------------------------------------------------
def spec(s: pb.Schedule, limits: Limits) -> ScheduleSpec:
    """Every violation of a Schedule at once, each naming its field ("schedule.cron")."""
    p = "schedule."
    violations: list[FieldViolation] = []
    v = sched.id_violation(p + "id", s.id)
    if v:
        violations.append(v)
    every = secs(s.every) if s.HasField("every") else None
    timing = sched.Timing(s.cron or None, every, s.timezone or sched.DEFAULT_TIMEZONE)
    violations += sched.check_timing(p, timing)
    if s.missed_tick_policy not in MISSED_FROM_PROTO:
        violations.append(
            FieldViolation(p + "missed_tick_policy", f"unknown policy {s.missed_tick_policy}")
        )
    missed = MISSED_FROM_PROTO.get(s.missed_tick_policy, sched.Missed.SKIP)
    violations += sched.check_missed(p, missed, s.catch_up_max)
    template: NewJob | None = None
    if not s.HasField("job"):
        violations.append(
            FieldViolation(p + "job", "job (the template each tick enqueues) is required")
        )
    else:
        if s.job.HasField("run_at"):
            violations.append(FieldViolation(p + "job.run_at", "a tick's job runs at the tick"))
        if s.job.idempotency_key:
            violations.append(
                FieldViolation(p + "job.idempotency_key", "a tick's job is keyed by its tick")
            )
        for name in ("traceparent", "tracestate"):
            if getattr(s.job, name):
                violations.append(
                    FieldViolation(f"{p}job.{name}", "a tick's job starts a trace of its own")
                )
        try:
            template = convert.new_job(s.job, p + "job.", limits)
        except InvalidArgument as err:
            violations += err.violations
    raise_if(violations)
    assert template is not None
    return ScheduleSpec(s.id, timing, template, s.paused, missed, s.catch_up_max)


def schedule_id(field: str, value: str) -> str:
    v = sched.id_violation(field, value)
    raise_if([v] if v else [])
    return value


# -- domain -> proto ----------------------------------------------------------------------------
def template_request(text: str) -> job_service_pb2.EnqueueRequest:
    """The stored template as the EnqueueRequest it came from (defaults applied)."""
    job = sched.template_job(text, run_at=None, key=None)
    req = job_service_pb2.EnqueueRequest(
        queue=job.queue, kind=job.kind, priority=job.priority, max_attempts=job.max_attempts
    )
    payload = json.loads(job.payload_json)
    if payload:
        req.payload.update(payload)
    req.lease_duration.CopyFrom(duration(job.lease_seconds))
    if job.backoff_base is not None:
        req.retry_policy.backoff_base.CopyFrom(duration(job.backoff_base))
    if job.backoff_cap is not None:
        req.retry_policy.backoff_cap.CopyFrom(duration(job.backoff_cap))
    if job.metadata_json:
        req.metadata.update(json.loads(job.metadata_json))
    if job.concurrency_key:
        req.concurrency_key = job.concurrency_key
    if job.unique is not None:
        u = job.unique
        req.unique.key = u.key
        req.unique.states.extend(_STATE_TO_PROTO[JobState(s)] for s in u.states)
        if u.period is not None:
            req.unique.period.CopyFrom(duration(u.period))
    return req


def schedule(r: ScheduleRecord) -> pb.Schedule:
    out = pb.Schedule(
        id=r.id,
        cron=r.cron or "",
        timezone=r.timezone,
        job=template_request(r.template),
        paused=r.paused,
        missed_tick_policy=MISSED_TO_PROTO[sched.Missed(r.missed)],
        catch_up_max=r.catch_up_max,
        last_job_id=str(r.last_job_id) if r.last_job_id else "",
    )
    if r.every_seconds is not None:
        out.every.CopyFrom(duration(r.every_seconds))
    for at, ts in (
        (r.next_run_at, out.next_run_at),
        (r.last_run_at, out.last_run_at),
        (r.created_at, out.created_at),
        (r.updated_at, out.updated_at),
    ):
        if at is not None:
            convert.set_time(ts, at)
    return out


def _page_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def _after(token: str) -> str:
    if not token:
        return ""
    try:
        after = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        after = None
    if after is None or sched.id_violation("page_token", after) is not None:
        raise InvalidArgument(
            "page_token is not a token this server issued",
            [FieldViolation("page_token", "malformed page token")],
            reason="INVALID_PAGE_TOKEN",
        )
    return after


class ScheduleService(pb_grpc.ScheduleServiceServicer):
    def __init__(self, store: Store, settings: Settings, wake: Callable[[], None]) -> None:
        self.store = store
        self.settings = settings
        self.limits = limits_of(settings)
        self.wake = wake  # the engine's schedules_changed: this replica's loop looks again now

    async def CreateSchedule(
        self, request: pb.CreateScheduleRequest, context: Ctx
    ) -> pb.CreateScheduleResponse:
        s = spec(request.schedule, self.limits)
        row = await self.store.schedules.create(
            s.id,
            s.timing,
            s.template,
            paused=s.paused,
            missed=s.missed,
            catch_up_max=s.catch_up_max,
        )
        self.wake()
        return pb.CreateScheduleResponse(schedule=schedule(row))

    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: Ctx
    ) -> pb.GetScheduleResponse:
        row = await self.store.schedules.get(schedule_id("id", request.id))
        return pb.GetScheduleResponse(schedule=schedule(row))

    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Ctx
    ) -> pb.ListSchedulesResponse:
        limit = page_size(request.page_size, self.settings)
        rows = await self.store.schedules.page(_after(request.page_token), limit + 1)
        token = ""
        if len(rows) > limit:
            rows = rows[:limit]
            token = _page_token(rows[-1].id)
        return pb.ListSchedulesResponse(
            schedules=[schedule(r) for r in rows], next_page_token=token
        )

    async def UpdateSchedule(
        self, request: pb.UpdateScheduleRequest, context: Ctx
    ) -> pb.UpdateScheduleResponse:
        s = spec(request.schedule, self.limits)
        row = await self.store.schedules.update(
            s.id,
            s.timing,
            s.template,
            paused=s.paused,
            missed=s.missed,
            catch_up_max=s.catch_up_max,
        )
        self.wake()
        return pb.UpdateScheduleResponse(schedule=schedule(row))

    async def DeleteSchedule(
        self, request: pb.DeleteScheduleRequest, context: Ctx
    ) -> pb.DeleteScheduleResponse:
        await self.store.schedules.delete(schedule_id("id", request.id))
        return pb.DeleteScheduleResponse()

    async def PauseSchedule(
        self, request: pb.PauseScheduleRequest, context: Ctx
    ) -> pb.PauseScheduleResponse:
        row = await self.store.schedules.pause(schedule_id("id", request.id))
        return pb.PauseScheduleResponse(schedule=schedule(row))

    async def ResumeSchedule(
        self, request: pb.ResumeScheduleRequest, context: Ctx
    ) -> pb.ResumeScheduleResponse:
        row = await self.store.schedules.resume(schedule_id("id", request.id))
        self.wake()
        return pb.ResumeScheduleResponse(schedule=schedule(row))

    async def TriggerSchedule(
        self, request: pb.TriggerScheduleRequest, context: Ctx
    ) -> pb.TriggerScheduleResponse:
        row, created = await self.store.schedules.trigger(schedule_id("id", request.id))
        if created:
            metrics.enqueued(row.queue, row.kind)
            self.store.commits.jobs_ready()  # its job is due now: wake this replica's claims
        return pb.TriggerScheduleResponse(job=convert.job(row), created=created)
