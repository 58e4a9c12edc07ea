"""Translations between protobuf messages and domain values / store records."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from jobqueue_grpc._durations import seconds
from jobqueue_grpc._struct import to_dict
from jobqueue_grpc.domain.errors import FieldViolation, InvalidArgument
from jobqueue_grpc.domain.jobs import (
    MAX_ATTEMPTS_LIMIT,
    MAX_PRIORITY,
    Limits,
    NewJob,
    NewJobs,
    check_new_job,
    uuid7_strings,
)
from jobqueue_grpc.domain.metadata import (
    NO_TRACE,
    TraceContext,
    metadata_violations,
    trace_violations,
)
from jobqueue_grpc.domain.records import JobRecord, LeasedJob
from jobqueue_grpc.domain.states import STATES, JobState
from jobqueue_grpc.domain.unique import Unique, check_unique, derived_key, refusing_states
from jobqueue_grpc.domain.validation import (
    DEFAULT_QUEUE,
    IDEMPOTENCY_KEY_MAX,
    KIND_RE,
    QUEUE_RE,
    raise_if,
    time_violation,
)
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2, job_service_pb2, worker_service_pb2

STATE_TO_PROTO: dict[str, job_pb2.JobState.ValueType] = {
    s: job_pb2.JobState.Value(f"JOB_STATE_{s.name}") for s in STATES
}
STATE_FROM_PROTO = {v: JobState(k) for k, v in STATE_TO_PROTO.items()}


# -- JSON <-> Struct ---------------------------------------------------------------------------
# An escaped NUL in json.dumps output: `\u0000` after an even number of backslashes (an odd number
# means the text holds a literal backslash followed by "u0000", which jsonb stores fine).
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def struct_to_json(field: str, struct: struct_pb2.Struct) -> str:
    """Encodes a Struct as JSON for jsonb; INVALID_ARGUMENT for what jsonb cannot hold."""
    if not struct.fields:
        return "{}"
    obj = to_dict(struct)
    try:
        text = json.dumps(obj, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        raise InvalidArgument(
            f"{field} holds NaN or Infinity, which JSON cannot",
            [FieldViolation(field, "numbers must be finite")],
        ) from None
    if _NUL.search(text):
        raise_if([FieldViolation(field, f"{field} holds a NUL character, which jsonb cannot")])
    return text


_PAYLOAD_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def payload_to_json(field: str, struct: struct_pb2.Struct) -> str:
    """struct_to_json for enqueue: the same text and the same errors, cheaper when all is well
    (one encoder for every call, and a NUL is looked for by regex only when the text holds an
    escaped one at all). Anything out of the ordinary goes through struct_to_json itself."""
    if not struct.fields:
        return "{}"
    try:
        text = _PAYLOAD_ENCODER.encode(to_dict(struct))
    except ValueError:  # NaN or Infinity
        return struct_to_json(field, struct)  # raises the violation
    if "\\u0000" in text:  # perhaps an escaped NUL
        return struct_to_json(field, struct)
    return text


def json_to_struct(text: str | None, out: struct_pb2.Struct) -> None:
    if text:
        out.update(json.loads(text))


# -- time ---------------------------------------------------------------------------------------
def to_datetime(field: str, ts: timestamp_pb2.Timestamp) -> datetime:
    """A request's Timestamp as a datetime; INVALID_ARGUMENT naming `field` when it is not a
    valid time or outside the range the domain accepts (validation.time_violation)."""
    try:
        at: datetime | None = ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        at = None
    violation = time_violation(field, at)
    if violation is not None:
        raise InvalidArgument(f"{field} is out of range", [violation], reason=violation.reason)
    assert at is not None
    return at


# -- requests -> domain -------------------------------------------------------------------------
def metadata_json(metadata: Mapping[str, str]) -> str | None:
    """A metadata map as the JSON text its jsonb column takes; None for an empty one."""
    if not metadata:
        return None
    return json.dumps(dict(metadata), separators=(",", ":"), ensure_ascii=False)


def new_job(
    req: job_service_pb2.EnqueueRequest, prefix: str, limits: Limits, trace: TraceContext = NO_TRACE
) -> NewJob:
    """Validates one EnqueueRequest (every violation at once) and applies defaults. `trace` is
    the call's trace context (its metadata), which the request's own fields override."""
    payload_json = payload_to_json(prefix + "payload", req.payload)
    lease = seconds(req.lease_duration) if req.HasField("lease_duration") else None
    base = cap = None
    if req.HasField("retry_policy"):
        rp = req.retry_policy
        base = seconds(rp.backoff_base) if rp.HasField("backoff_base") else None
        cap = seconds(rp.backoff_cap) if rp.HasField("backoff_cap") else None
    queue = req.queue or DEFAULT_QUEUE
    violations = check_new_job(
        prefix,
        queue=queue,
        kind=req.kind,
        payload_bytes=len(payload_json.encode()),
        priority=req.priority,
        max_attempts=req.max_attempts,
        idempotency_key=req.idempotency_key,
        lease_seconds=lease,
        backoff_base=base,
        backoff_cap=cap,
        limits=limits,
        concurrency_key=req.concurrency_key,
    )
    # issue 16: labels and trace context
    if req.metadata:
        violations += metadata_violations(prefix + "metadata", req.metadata)
    if req.traceparent or req.tracestate:
        violations += trace_violations(prefix, req.traceparent, req.tracestate)
        trace = (req.traceparent or None, req.tracestate or None)
    run_at = to_datetime(prefix + "run_at", req.run_at) if req.HasField("run_at") else None
    unique = None
    if req.HasField("unique"):
        unique = _unique(req, prefix, queue, payload_json, violations)
    raise_if(violations)
    return NewJob(
        queue=queue,
        kind=req.kind,
        payload_json=payload_json,
        priority=req.priority,
        max_attempts=req.max_attempts or limits.default_max_attempts,
        run_at=run_at,
        idempotency_key=req.idempotency_key or None,
        lease_seconds=lease if lease is not None else limits.default_lease_seconds,
        backoff_base=base,
        backoff_cap=cap,
        unique=unique,
        concurrency_key=req.concurrency_key or None,
        metadata_json=metadata_json(req.metadata),
        traceparent=trace[0],
        tracestate=trace[1],
    )


def _unique(
    req: job_service_pb2.EnqueueRequest,
    prefix: str,
    queue: str,
    payload_json: str,
    violations: list[FieldViolation],
) -> Unique | None:
    """The request's `unique`, validated (its violations added to `violations`)."""
    u = req.unique
    field = prefix + "unique."
    period = seconds(u.period) if u.HasField("period") else None
    states: list[JobState] = []
    found: list[FieldViolation] = []
    for s in u.states:
        if s in STATE_FROM_PROTO:
            states.append(STATE_FROM_PROTO[s])
        else:
            found.append(FieldViolation(field + "states", f"unknown state {s}"))
    found += check_unique(field, key=u.key, states=states, period=period)
    violations.extend(found)
    if found:
        return None
    key = u.key or derived_key(queue, req.kind, payload_json)
    return Unique(key, refusing_states(states, period), period)


def has_unique(reqs: Sequence[job_service_pb2.EnqueueRequest]) -> bool:
    """Whether any job of a batch is unique: such a batch takes new_job and insert_unique, not
    new_jobs (whose columns carry no `unique`) and the batch statement."""
    return any(r.HasField("unique") for r in reqs)


def new_jobs(
    reqs: Sequence[job_service_pb2.EnqueueRequest], limits: Limits, trace: TraceContext = NO_TRACE
) -> NewJobs:
    """new_job for every request of a batch, column by column, ids included. All or nothing:
    INVALID_ARGUMENT with every violation of every job ("jobs[3].kind") if any job is bad.

    No request may carry `unique` (see has_unique). The common request (no run_at,
    lease_duration or retry_policy) is checked inline, with the
    same rules as check_new_job; any other request, and any request that fails a check, goes
    through new_job itself, so rules and messages have one source.
    """
    out = NewJobs()
    violations: list[FieldViolation] = []
    good_queues: set[str] = set()  # names this batch already matched against the pattern
    good_kinds: set[str] = set()
    max_payload = limits.payload_max_bytes
    default_attempts = limits.default_max_attempts
    default_lease = limits.default_lease_seconds
    queues, kinds, payloads = out.queue, out.kind, out.payload_json
    priorities, attempts, keys = out.priority, out.max_attempts, out.idempotency_key
    for i, req in enumerate(reqs):
        has = req.HasField
        if not (
            has("run_at")
            or has("lease_duration")
            or has("retry_policy")
            or req.concurrency_key
            or req.metadata
            or req.traceparent
            or req.tracestate
        ):
            queue = req.queue or DEFAULT_QUEUE
            kind = req.kind
            priority = req.priority
            max_attempts = req.max_attempts
            key = req.idempotency_key
            payload_json = "{}"
            try:
                if has("payload"):
                    payload_json = payload_to_json("payload", req.payload)
            except InvalidArgument:
                pass  # new_job below reports it under the job's own field name
            else:
                if (
                    (queue in good_queues or _matches(QUEUE_RE, queue, good_queues))
                    and (kind in good_kinds or _matches(KIND_RE, kind, good_kinds))
                    and -MAX_PRIORITY <= priority <= MAX_PRIORITY
                    and 0 <= max_attempts <= MAX_ATTEMPTS_LIMIT
                    and (not key or (len(key) <= IDEMPOTENCY_KEY_MAX and "\x00" not in key))
                    and (  # a character is at most 4 bytes of UTF-8: encode only near the limit
                        len(payload_json) <= max_payload // 4
                        or len(payload_json.encode()) <= max_payload
                    )
                ):
                    queues.append(queue)
                    kinds.append(kind)
                    payloads.append(payload_json)
                    priorities.append(priority)
                    attempts.append(max_attempts or default_attempts)
                    keys.append(key or None)
                    continue
        try:
            job = new_job(req, f"jobs[{i}].", limits, trace)
        except InvalidArgument as err:
            violations.extend(err.violations)
            continue
        if len(queues) != len(out.run_at):  # leave the inline path's columns whole first
            _pad(out, default_lease, trace)
        out.append(job)
    raise_if(violations, "batch rejected, nothing enqueued")
    _pad(out, default_lease, trace)
    out.ids = uuid7_strings(len(queues))
    return out


def _matches(pattern: re.Pattern[str], name: str, seen: set[str]) -> bool:
    if pattern.fullmatch(name):
        seen.add(name)
        return True
    return False


def _pad(out: NewJobs, default_lease: float, trace: TraceContext) -> None:
    """The inline path fills only the columns a plain request sets: add the defaults of the rest
    (the call's trace context included)."""
    n = len(out.queue) - len(out.run_at)
    if n:
        out.run_at += [None] * n
        out.lease_seconds += [default_lease] * n
        out.backoff_base += [None] * n
        out.backoff_cap += [None] * n
        out.concurrency_key += [None] * n
        out.metadata_json += [None] * n
        out.traceparent += [trace[0]] * n
        out.tracestate += [trace[1]] * n


def enqueue_batch_response(
    reqs: Sequence[job_service_pb2.EnqueueRequest],
    jobs: NewJobs,
    created: Sequence[bool],
    at: datetime | None,
    existing: Mapping[str, JobRecord],
) -> job_service_pb2.EnqueueBatchResponse:
    """The batch's results in request order. A job the batch created is built from the values it
    was inserted with (what convert.job would read back: the insert sets only created_at,
    updated_at, run_at when not given, and the state); a job whose idempotency key already named
    one is that job, read from the database.

    Every value the whole batch shares goes into one template Job, copied per job; only the
    values that vary are set job by job.
    """
    resp = job_service_pb2.EnqueueBatchResponse()
    add = resp.results.add
    template = job_pb2.Job(state=job_pb2.JOB_STATE_QUEUED)
    if at is not None:
        for ts in (template.run_at, template.created_at, template.updated_at):
            set_time(ts, at)
    n = len(jobs)
    if n == 0:
        return resp
    columns: list[tuple[str, list[Any]]] = [
        ("queue", jobs.queue),
        ("kind", jobs.kind),
        ("priority", jobs.priority),
        ("max_attempts", jobs.max_attempts),
    ]
    varying: list[tuple[str, list[Any]]] = []
    for name, values in columns:
        if values.count(values[0]) == n:
            setattr(template, name, values[0])
        else:
            varying.append((name, values))
    keys = jobs.idempotency_key
    payloads = jobs.payload_json if jobs.payload_json.count(jobs.payload_json[0]) < n else None
    if payloads is None and jobs.payload_json[0] != "{}":
        # The request's Struct holds the JSON value the row stores (jsonb keeps JSON values as
        # sent, save -0, which it stores as 0).
        template.payload.CopyFrom(reqs[0].payload)
    run_ats = jobs.run_at if jobs.run_at.count(jobs.run_at[0]) < n else None
    if run_ats is None and jobs.run_at[0] is not None:
        _set_run_at(template, jobs.run_at[0], at)
    set_duration(template.lease_duration, jobs.lease_seconds[0])
    leases = jobs.lease_seconds if jobs.lease_seconds.count(jobs.lease_seconds[0]) < n else None
    backoff = any(b is not None for b in jobs.backoff_base) or any(
        c is not None for c in jobs.backoff_cap
    )
    labelled = any(jobs.metadata_json)  # issue 16: labels and trace context, when any
    traced = any(jobs.traceparent)
    ids = jobs.ids
    if not (varying or payloads or run_ats or leases or backoff or labelled or traced) and (
        keys.count(None) == n and jobs.concurrency_key.count(None) == n and all(created)
    ):
        uniform = _uniform_results(template, ids)
        if uniform is not None:
            return uniform
    for i, was_created in enumerate(created):
        if not was_created:
            key = keys[i]
            assert key is not None
            add(job=job(existing[key]), created=False)
            continue
        j = add(created=True).job
        j.CopyFrom(template)
        j.id = ids[i]
        for name, values in varying:
            setattr(j, name, values[i])
        key = keys[i]
        if key is not None:
            j.idempotency_key = key
        if (ck := jobs.concurrency_key[i]) is not None:
            j.concurrency_key = ck
        if payloads is not None and payloads[i] != "{}":
            j.payload.CopyFrom(reqs[i].payload)
        if run_ats is not None and (run_at := run_ats[i]) is not None:
            _set_run_at(j, run_at, at)
        if leases is not None:
            set_duration(j.lease_duration, leases[i])
        if backoff:
            base, cap = jobs.backoff_base[i], jobs.backoff_cap[i]
            if base is not None:
                set_duration(j.retry_policy.backoff_base, base)
            if cap is not None:
                set_duration(j.retry_policy.backoff_cap, cap)
        if labelled and jobs.metadata_json[i] is not None:
            j.metadata.update(reqs[i].metadata)
        if traced and (tp := jobs.traceparent[i]) is not None:
            j.traceparent = tp
            j.tracestate = jobs.tracestate[i] or ""
    return resp


_MARK = "\x01" * 36  # stands for a job id (uuid7 text: 36 characters) in _uniform_results


def _uniform_results(
    template: job_pb2.Job, ids: Sequence[str]
) -> job_service_pb2.EnqueueBatchResponse | None:
    """The response of a batch whose created jobs differ in their ids alone (the usual batch),
    or None where this does not apply. Every result then has the same bytes but for the id,
    so the response's wire form is joined from the bytes around one result's id and parsed once
    in C: a third of the CPU of copying the template into each result (enqueue_batch_response).
    """
    if any(len(i) != len(_MARK) for i in ids):
        return None
    one = job_service_pb2.EnqueueBatchResponse()
    result = one.results.add(created=True)
    result.job.CopyFrom(template)
    result.job.id = _MARK
    parts = one.SerializeToString().split(_MARK.encode())
    if len(parts) != 2:
        return None
    before, after = parts
    return job_service_pb2.EnqueueBatchResponse.FromString(
        b"".join(before + i.encode() + after for i in ids)
    )


def _set_run_at(j: job_pb2.Job, run_at: datetime, at: datetime | None) -> None:
    set_time(j.run_at, run_at)
    if at is not None and run_at > at:  # the insert's CASE, on the same two values
        j.state = job_pb2.JOB_STATE_SCHEDULED


# -- rows -> proto ------------------------------------------------------------------------------
def attempt_error(e: Mapping[str, Any]) -> job_pb2.AttemptError:
    out = job_pb2.AttemptError(
        attempt=int(e.get("attempt", 0)),
        message=str(e.get("message", "")),
        source=str(e.get("source", "")),
    )
    if e.get("details"):
        out.details.update(e["details"])
    if e.get("failed_at"):
        out.failed_at.FromDatetime(datetime.fromisoformat(e["failed_at"]))
    return out


def errors_list(text: str | None) -> list[job_pb2.AttemptError]:
    return [attempt_error(e) for e in json.loads(text)] if text else []


_NO_TIME = datetime.max.replace(tzinfo=UTC)


def set_time(ts: timestamp_pb2.Timestamp, at: datetime) -> None:
    """Timestamp.FromDatetime, exact to the microsecond and several times faster."""
    ts.seconds = int(at.timestamp())
    ts.nanos = at.microsecond * 1000


def set_duration(d: duration_pb2.Duration, secs: float) -> None:
    whole = int(secs)
    d.seconds = whole
    d.nanos = round((secs - whole) * 1e9)


def job(r: JobRecord) -> job_pb2.Job:
    """A stored job as a Job message (a leased one: fill_leased_job)."""
    j = job_pb2.Job(
        id=str(r.id),
        queue=r.queue,
        kind=r.kind,
        priority=r.priority,
        max_attempts=r.max_attempts,
        state=STATE_TO_PROTO[r.state],
        attempt=r.attempt,
        idempotency_key=r.idempotency_key or "",
        cancel_requested=r.cancel_requested,
        worker_id=r.worker_id or "",
        unique_key=r.unique_key or "",
        concurrency_key=r.concurrency_key or "",
    )
    for text, out in ((r.payload, j.payload), (r.result, j.result), (r.progress, j.progress)):
        if text and text != "{}":
            out.update(json.loads(text))
    for at, ts in (
        (r.run_at, j.run_at),
        (r.created_at, j.created_at),
        (r.updated_at, j.updated_at),
        (r.started_at, j.started_at),
        (r.finished_at, j.finished_at),
        (r.lease_expires_at, j.lease_expires_at),
    ):
        if at is not None and at != _NO_TIME:
            set_time(ts, at)
    _fill_common(j, r.lease_seconds, r.backoff_base, r.backoff_cap, r.errors)
    _fill_labels(j, r.metadata, r.traceparent, r.tracestate)
    return j


def _fill_labels(
    j: job_pb2.Job, metadata: str | None, traceparent: str | None, tracestate: str | None
) -> None:
    """issue 16: a job's labels and trace context (NULL columns: nothing to do)."""
    if metadata is not None:
        j.metadata.update(json.loads(metadata))
    if traceparent is not None:
        j.traceparent = traceparent
        if tracestate is not None:
            j.tracestate = tracestate


def _fill_common(
    j: job_pb2.Job, lease: float, base: float | None, cap: float | None, errors: str | None
) -> None:
    set_duration(j.lease_duration, lease)
    if base is not None:
        set_duration(j.retry_policy.backoff_base, base)
    if cap is not None:
        set_duration(j.retry_policy.backoff_cap, cap)
    if errors and errors != "[]":
        errs = errors_list(errors)
        j.errors.extend(errs)
        j.last_error.CopyFrom(errs[-1])


def set_epoch(ts: timestamp_pb2.Timestamp, seconds: float) -> None:
    """A Timestamp from epoch seconds read as float8 (exact to the microsecond)."""
    micros = round(seconds * 1e6)
    ts.seconds = micros // 1_000_000
    ts.nanos = micros % 1_000_000 * 1000


def fill_leased_job(j: job_pb2.Job, r: LeasedJob) -> None:
    """A leased job written into `j`, an empty Job inside the message that will carry it.
    Building a Job and passing it to LeasedJob(job=...), then the LeasedJob to
    LeasedJobs(jobs=[...]), copies it twice (~10 us a job here). The lease hot path uses
    add_leased_jobs, which writes the fields jobs share once a batch."""
    _fill_shared(j, r)
    j.id = str(r.id)
    _fill_own(j, r)


def _shared_key(r: LeasedJob) -> tuple[object, ...]:
    """What _fill_shared reads: jobs with equal keys get equal fields from it."""
    return (
        r.queue, r.kind, r.priority, r.max_attempts, r.attempt, r.worker_id, r.started_at_s,
        r.lease_seconds, r.backoff_base, r.backoff_cap, r.lease_expires_at_s,
    )  # fmt: skip


def _fill_shared(j: job_pb2.Job, r: LeasedJob) -> None:
    """The fields the jobs of one claim usually share (see _shared_key)."""
    j.queue = r.queue
    j.kind = r.kind
    j.priority = r.priority
    j.max_attempts = r.max_attempts
    j.state = job_pb2.JOB_STATE_RUNNING
    j.attempt = r.attempt
    j.worker_id = r.worker_id or ""
    set_epoch(j.started_at, r.started_at_s)
    set_epoch(j.updated_at, r.started_at_s)  # the lease set both to its now()
    set_epoch(j.lease_expires_at, r.lease_expires_at_s)
    _fill_common(j, r.lease_seconds, r.backoff_base, r.backoff_cap, None)


def _fill_own(j: job_pb2.Job, r: LeasedJob) -> None:
    """The fields of one job alone (all but its id)."""
    set_epoch(j.run_at, r.run_at_s)
    set_epoch(j.created_at, r.created_at_s)
    if r.idempotency_key:
        j.idempotency_key = r.idempotency_key
    for text, out in ((r.payload, j.payload), (r.progress, j.progress)):
        if text and text != "{}":
            out.update(json.loads(text))
    if r.errors and r.errors != "[]":
        errs = errors_list(r.errors)
        j.errors.extend(errs)
        j.last_error.CopyFrom(errs[-1])
    if r.metadata is not None or r.traceparent is not None:
        _fill_labels(j, r.metadata, r.traceparent, r.tracestate)
    if r.concurrency_key is not None:
        j.concurrency_key = r.concurrency_key


def add_leased_jobs(
    out: RepeatedCompositeFieldContainer[worker_service_pb2.LeasedJob],
    leases: Iterable[tuple[LeasedJob, str, str, float]],
) -> None:
    """Appends (job, id text, lease token text, lease expiry) leases to `out` (LeasedJobs.jobs).

    The jobs of one claim share most fields (queue, kind, attempt, the lease's times...): those
    are written into a template once, serialized, and merged into each job's message in C
    (MergeFromString), which costs a third of setting them one by one from Python; only the
    job's own fields (id, times, payload...) are set per job.
    """
    key: tuple[object, ...] | None = None
    shared = b""
    add = out.add
    for r, id_text, token, expires_at in leases:
        k = _shared_key(r)
        if k != key:
            key = k
            template = worker_service_pb2.LeasedJob()
            _fill_shared(template.job, r)
            set_epoch(template.lease_expires_at, r.lease_expires_at_s)
            shared = template.SerializeToString()
        leased = add()
        leased.MergeFromString(shared)
        leased.lease_token = token
        j = leased.job
        j.id = id_text
        _fill_own(j, r)
        if expires_at != r.lease_expires_at_s:  # extended since: not the template's
            set_epoch(leased.lease_expires_at, expires_at)
