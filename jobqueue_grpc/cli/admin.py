"""The admin commands: `jobs`, `dlq` and `queues` (`schedules`: cli/schedules.py). They speak
gRPC only, like any other client.

Tables by default, `--json` for scripts. An RPC error prints one line (code, message, ErrorInfo
reason) and exits 1. Bulk requeue and purge count first (a dry run), ask before acting unless
`--yes`, then work in steps of `--chunk` with a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from jobqueue_grpc.cli import output
from jobqueue_grpc.cli.connection import add_connection_args, channel
from jobqueue_grpc.gen.jobqueue.v1 import dead_letter_service_pb2 as dl
from jobqueue_grpc.gen.jobqueue.v1 import dead_letter_service_pb2_grpc as dl_grpc
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as js_grpc
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2 as qs
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2_grpc as qs_grpc

TIMEOUT = 60.0  # seconds per RPC; bulk work is split into calls of --chunk each
# The job states as the CLI names them, from the contract (JOB_STATE_QUEUED -> "queued", ...).
STATES = tuple(
    name.removeprefix("JOB_STATE_").lower()
    for name in job_pb2.JobState.keys()  # noqa: SIM118 (an EnumTypeWrapper, not a dict)
    if name != "JOB_STATE_UNSPECIFIED"
)
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

Handler = Callable[[argparse.Namespace, grpc.Channel], int]


class UsageError(Exception):
    """A bad flag value: printed as one line, exit 2."""


# -- argument types -------------------------------------------------------------------------------
def parse_time(text: str) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or an age like `30m`, `12h`, `7d`."""
    m = _AGO.match(text.strip())
    if m:
        return datetime.now(UTC) - timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO time (2026-01-31T12:00:00Z) nor an age (30m, 12h, 7d)"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def ts(at: datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(at)
    return t


def state_name(state: int) -> str:
    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


# -- jobs -----------------------------------------------------------------------------------------
def _job_rows(jobs: list[job_pb2.Job]) -> None:
    output.table(
        ["ID", "QUEUE", "KIND", "STATE", "ATTEMPT", "PRIORITY", "CREATED", "METADATA"],
        [
            [
                j.id,
                j.queue,
                j.kind,
                state_name(j.state),
                j.attempt,
                j.priority,
                output.when(j.created_at, j.HasField("created_at")),
                _labels(j.metadata),
            ]
            for j in jobs
        ],
    )


def _job_detail(j: job_pb2.Job) -> None:
    output.fields(
        [
            ("id", j.id),
            ("queue", j.queue),
            ("kind", j.kind),
            ("state", state_name(j.state) + (" (cancel requested)" if j.cancel_requested else "")),
            ("attempt", f"{j.attempt} of {j.max_attempts}"),
            ("priority", j.priority),
            ("idempotency key", j.idempotency_key or "-"),
            ("payload", json.dumps(output.as_dict(j.payload))),
            ("metadata", _labels(j.metadata)),
            ("traceparent", j.traceparent or "-"),
            ("run at", output.when(j.run_at, j.HasField("run_at"))),
            ("created", output.when(j.created_at, j.HasField("created_at"))),
            ("started", output.when(j.started_at, j.HasField("started_at"))),
            ("finished", output.when(j.finished_at, j.HasField("finished_at"))),
            ("worker", j.worker_id or "-"),
            ("last error", j.last_error.message if j.HasField("last_error") else "-"),
        ]
    )
    if j.HasField("result"):
        print(f"result: {json.dumps(output.as_dict(j.result))}")


def _labels(metadata: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(metadata.items())) or "-"


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def jobs_enqueue(args: argparse.Namespace, ch: grpc.Channel) -> int:
    req = js.EnqueueRequest(
        queue=args.queue,
        kind=args.kind,
        priority=args.priority,
        max_attempts=args.max_attempts,
        idempotency_key=args.idempotency_key,
        metadata=dict(args.label or []),
    )
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as e:
        raise UsageError(f"--payload is not JSON: {e}") from None
    if not isinstance(payload, dict):
        raise UsageError("--payload must be a JSON object")
    req.payload.update(payload)
    if args.run_at is not None:
        req.run_at.CopyFrom(ts(args.run_at))
    resp = js_grpc.JobServiceStub(ch).Enqueue(req, timeout=TIMEOUT)
    if args.json:
        output.print_json(resp)
    else:
        print(f"{'enqueued' if resp.created else 'already enqueued'} {resp.job.id}")
        _job_detail(resp.job)
    return 0


def jobs_get(args: argparse.Namespace, ch: grpc.Channel) -> int:
    job = js_grpc.JobServiceStub(ch).GetJob(js.GetJobRequest(id=args.id), timeout=TIMEOUT).job
    if args.json:
        output.print_json(job)
    else:
        _job_detail(job)
    return 0


def jobs_list(args: argparse.Namespace, ch: grpc.Channel) -> int:
    stub = js_grpc.JobServiceStub(ch)
    state = job_pb2.JobState.Value("JOB_STATE_" + (args.state or "unspecified").upper())
    jobs: list[job_pb2.Job] = []
    token = ""
    while len(jobs) < args.limit:
        resp = stub.ListJobs(
            js.ListJobsRequest(
                queue=args.queue,
                kind=args.kind,
                state=state,
                page_size=min(1000, args.limit - len(jobs)),
                page_token=token,
                created_before=ts(args.created_before) if args.created_before else None,
                metadata=dict(args.label or []),
            ),
            timeout=TIMEOUT,
        )
        jobs.extend(resp.jobs)
        token = resp.next_page_token
        if not token:
            break
    if args.json:
        output.print_json(jobs)
    else:
        _job_rows(jobs)
    return 0


def jobs_cancel(args: argparse.Namespace, ch: grpc.Channel) -> int:
    if not args.id:
        return _jobs_cancel_many(args, ch)
    resp = js_grpc.JobServiceStub(ch).CancelJob(js.CancelJobRequest(id=args.id), timeout=TIMEOUT)
    if args.json:
        output.print_json(resp)
    else:
        outcome = js.CancelOutcome.Name(resp.outcome).removeprefix("CANCEL_OUTCOME_").lower()
        print(f"{resp.job.id}: {outcome.replace('_', ' ')}")
    return 0


def _jobs_cancel_many(args: argparse.Namespace, ch: grpc.Channel) -> int:
    """CancelJobs: counts (a dry run), asks unless --yes, then cancels; the server works in
    chunks of its own."""
    req = js.CancelJobsRequest(queue=args.queue, kind=args.kind)
    if args.state:
        req.state = job_pb2.JobState.Value("JOB_STATE_" + args.state.upper())
    if args.created_before is not None:
        req.created_before.CopyFrom(ts(args.created_before))
    if not (req.queue or req.kind or req.state or args.created_before):
        raise UsageError("give a job id, or filters: --queue, --kind, --state, --created-before")
    stub = js_grpc.JobServiceStub(ch)
    req.dry_run = True
    count = stub.CancelJobs(req, timeout=TIMEOUT).matched
    if args.dry_run or count == 0:
        if args.json:
            output.print_json({"matched": count, "dry_run": True})
        else:
            print(f"would cancel {count} job(s)" if args.dry_run else "nothing to do")
        return 0
    if not output.confirm(f"cancel {count} job(s)?", args.yes):
        print("aborted: nothing changed", file=sys.stderr)
        return 1
    req.dry_run = False
    resp = stub.CancelJobs(req, timeout=TIMEOUT)
    if args.json:
        output.print_json(resp)
    else:
        print(
            f"cancelled {resp.cancelled} waiting job(s); "
            f"asked the workers of {resp.cancel_requested} running job(s) to stop"
        )
    return 0


# -- dead letters ---------------------------------------------------------------------------------
def _filter(args: argparse.Namespace) -> dl.DeadLetterFilter:
    f = dl.DeadLetterFilter(queue=args.queue, kind=args.kind)
    if args.failed_before is not None:
        f.failed_before.CopyFrom(ts(args.failed_before))
    if args.failed_after is not None:
        f.failed_after.CopyFrom(ts(args.failed_after))
    return f


def _describe_filter(f: dl.DeadLetterFilter) -> str:
    parts = [f"queue={f.queue}" if f.queue else "", f"kind={f.kind}" if f.kind else ""]
    if f.HasField("failed_before"):
        parts.append(f"failed before {output.when(f.failed_before)}")
    if f.HasField("failed_after"):
        parts.append(f"failed at/after {output.when(f.failed_after)}")
    text = ", ".join(p for p in parts if p)
    return f" ({text})" if text else ""


def dlq_list(args: argparse.Namespace, ch: grpc.Channel) -> int:
    stub = dl_grpc.DeadLetterServiceStub(ch)
    f = _filter(args)
    items: list[dl.DeadLetter] = []
    token = ""
    while len(items) < args.limit:
        resp = stub.ListDeadLetters(
            dl.ListDeadLettersRequest(
                filter=f, page_size=min(1000, args.limit - len(items)), page_token=token
            ),
            timeout=TIMEOUT,
        )
        items.extend(resp.dead_letters)
        token = resp.next_page_token
        if not token:
            break
    if args.json:
        output.print_json(items)
        return 0
    output.table(
        ["JOB ID", "QUEUE", "KIND", "ATTEMPTS", "FAILED", "LAST ERROR"],
        [
            [
                d.job_id,
                d.queue,
                d.kind,
                d.attempts,
                output.when(d.failed_at),
                d.last_error.message[:60],
            ]
            for d in items
        ],
    )
    return 0


def dlq_show(args: argparse.Namespace, ch: grpc.Channel) -> int:
    d = (
        dl_grpc.DeadLetterServiceStub(ch)
        .GetDeadLetter(dl.GetDeadLetterRequest(job_id=args.id), timeout=TIMEOUT)
        .dead_letter
    )
    if args.json:
        output.print_json(d)
        return 0
    output.fields(
        [
            ("job id", d.job_id),
            ("queue", d.queue),
            ("kind", d.kind),
            ("attempts", f"{d.attempts} of {d.max_attempts}"),
            ("priority", d.priority),
            ("idempotency key", d.idempotency_key or "-"),
            ("created", output.when(d.created_at)),
            ("failed", output.when(d.failed_at)),
            ("payload", json.dumps(output.as_dict(d.payload))),
        ]
    )
    print("errors:")
    output.table(
        ["  ATTEMPT", "AT", "SOURCE", "MESSAGE"],
        [
            [f"  {e.attempt}", output.when(e.failed_at), e.source or "-", e.message]
            for e in d.errors
        ],
    )
    return 0


def dlq_stats(args: argparse.Namespace, ch: grpc.Channel) -> int:
    s = dl_grpc.DeadLetterServiceStub(ch).GetDeadLetterStats(
        dl.GetDeadLetterStatsRequest(filter=_filter(args)), timeout=TIMEOUT
    )
    if args.json:
        output.print_json(s)
        return 0
    output.fields(
        [
            ("total", s.total),
            ("oldest failure", output.when(s.oldest_failed_at, s.HasField("oldest_failed_at"))),
            ("newest failure", output.when(s.newest_failed_at, s.HasField("newest_failed_at"))),
        ]
    )
    for title, counts in (("QUEUE", s.by_queue), ("KIND", s.by_kind)):
        if counts:
            print()
            output.table([title, "COUNT"], [[c.name, c.count] for c in counts])
    return 0


def _bulk(
    args: argparse.Namespace,
    verb: str,
    call: Callable[[dl.DeadLetterFilter, bool, int], int],
) -> int:
    """Counts, asks, then acts in chunks with a progress bar. `call(filter, dry_run, limit)`."""
    if args.chunk < 1:
        raise UsageError("--chunk must be at least 1")
    f = _filter(args)
    what = _describe_filter(f)
    total = call(f, True, 0)
    if args.dry_run or total == 0:
        if args.json:
            output.print_json({"count": total, "dry_run": True})
        else:
            print(f"would {verb} {total} dead letter(s){what}" if args.dry_run else "nothing to do")
        return 0
    if not output.confirm(f"{verb} {total} dead letter(s){what}?", args.yes):
        print("aborted: nothing changed", file=sys.stderr)
        return 1
    bar = output.Progress(verb, total)
    done = 0
    while done < total:
        n = call(f, False, min(args.chunk, total - done))
        done += n
        bar.advance(n)
        if n == 0:
            break  # the rest went elsewhere meanwhile (another operator, the pruner)
    bar.finish()
    if args.json:
        output.print_json({"count": done, "dry_run": False})
    else:
        print(f"{verb}d {done} dead letter(s){what}")
    return 0


def dlq_requeue(args: argparse.Namespace, ch: grpc.Channel) -> int:
    stub = dl_grpc.DeadLetterServiceStub(ch)
    if args.id:
        if args.dry_run or args.queue or args.kind or args.failed_before or args.failed_after:
            raise UsageError("give a job id or filters, not both")
        job = stub.RequeueDeadLetter(
            dl.RequeueDeadLetterRequest(job_id=args.id), timeout=TIMEOUT
        ).job
        if args.json:
            output.print_json(job)
        else:
            print(f"requeued {job.id} on {job.queue} ({state_name(job.state)})")
        return 0
    _require_scope(args)

    def call(f: dl.DeadLetterFilter, dry_run: bool, limit: int) -> int:
        req = dl.RequeueDeadLettersRequest(filter=f, dry_run=dry_run, limit=limit)
        return int(stub.RequeueDeadLetters(req, timeout=TIMEOUT).count)

    return _bulk(args, "requeue", call)


def dlq_delete(args: argparse.Namespace, ch: grpc.Channel) -> int:
    dl_grpc.DeadLetterServiceStub(ch).DeleteDeadLetter(
        dl.DeleteDeadLetterRequest(job_id=args.id), timeout=TIMEOUT
    )
    if args.json:
        output.print_json({"deleted": args.id})
    else:
        print(f"deleted {args.id}")
    return 0


def dlq_purge(args: argparse.Namespace, ch: grpc.Channel) -> int:
    stub = dl_grpc.DeadLetterServiceStub(ch)
    _require_scope(args)

    def call(f: dl.DeadLetterFilter, dry_run: bool, limit: int) -> int:
        req = dl.PurgeDeadLettersRequest(filter=f, dry_run=dry_run, limit=limit)
        return int(stub.PurgeDeadLetters(req, timeout=TIMEOUT).count)

    return _bulk(args, "purge", call)


def _require_scope(args: argparse.Namespace) -> None:
    if not (args.all or args.queue or args.kind or args.failed_before or args.failed_after):
        raise UsageError("name what to act on (--queue, --kind, --failed-before/after) or --all")


# -- queues ---------------------------------------------------------------------------------------
def _queue_rows(queues: list[qs.Queue]) -> None:
    output.table(
        ["NAME", "PAUSED", *(s.upper() for s in STATES)],
        [
            [q.name, "yes" if q.paused else "no", *(getattr(q.counts, s) for s in STATES)]
            for q in queues
        ],
    )


def queues_list(args: argparse.Namespace, ch: grpc.Channel) -> int:
    queues = list(
        qs_grpc.QueueServiceStub(ch).ListQueues(qs.ListQueuesRequest(), timeout=TIMEOUT).queues
    )
    if args.json:
        output.print_json(queues)
    else:
        _queue_rows(queues)
    return 0


def _one_queue(args: argparse.Namespace, q: qs.Queue, said: str = "") -> int:
    if args.json:
        output.print_json(q)
        return 0
    if said:
        print(said)
    output.fields(
        [
            ("name", q.name),
            ("paused", f"yes, since {output.when(q.paused_at)}" if q.paused else "no"),
            *((s, getattr(q.counts, s)) for s in STATES),
            *((("limits", _limits_text(q.limits)),) if q.HasField("limits") else ()),
            *((f"running[{k.key}]", k.running) for k in q.running_by_key),
            *((f"limits[kind {k.kind}]", _limits_text(k.limits)) for k in q.kind_limits),
        ]
    )
    return 0


def _limits_text(lim: qs.QueueLimits) -> str:
    parts = []
    if lim.max_running:
        parts.append(f"max {lim.max_running} running")
    if lim.key_max_running:
        parts.append(f"max {lim.key_max_running} running per key")
    if lim.rate:
        parts.append(f"{lim.rate:g}/s (burst {lim.burst:g})")
    if lim.key_rate:
        parts.append(f"{lim.key_rate:g}/s per key (burst {lim.key_burst:g})")
    if lim.fair_share or not parts:
        parts.append("fair share across keys")
    return ", ".join(parts)


def queues_limit(args: argparse.Namespace, ch: grpc.Channel) -> int:
    stub = qs_grpc.QueueServiceStub(ch)
    lim = qs.QueueLimits(
        max_running=args.max_running or 0,
        key_max_running=args.key_max_running or 0,
        rate=args.rate or 0.0,
        burst=args.burst or 0.0,
        key_rate=args.key_rate or 0.0,
        key_burst=args.key_burst or 0.0,
        fair_share=args.fair_share,
    )
    if args.clear:
        lim = qs.QueueLimits()
    req = qs.SetQueueLimitsRequest(name=args.name, limits=lim, kind=args.kind or "")
    q = stub.SetQueueLimits(req, timeout=TIMEOUT).queue
    if args.kind:
        now_set = any(k.kind == args.kind for k in q.kind_limits)
        said = f"limits of kind {args.kind} in {q.name} {'set' if now_set else 'cleared'}"
    else:
        said = f"limits of {q.name} set" if q.HasField("limits") else f"limits of {q.name} cleared"
    return _one_queue(args, q, said)


def queues_show(args: argparse.Namespace, ch: grpc.Channel) -> int:
    stub = qs_grpc.QueueServiceStub(ch)
    req = qs.GetQueueRequest(name=args.name, include_running_by_key=args.by_key)
    return _one_queue(args, stub.GetQueue(req, timeout=TIMEOUT).queue)


def queues_pause(args: argparse.Namespace, ch: grpc.Channel) -> int:
    stub = qs_grpc.QueueServiceStub(ch)
    q = stub.PauseQueue(qs.PauseQueueRequest(name=args.name), timeout=TIMEOUT).queue
    return _one_queue(args, q, f"paused {q.name}: no replica hands out its jobs until resumed")


def queues_resume(args: argparse.Namespace, ch: grpc.Channel) -> int:
    stub = qs_grpc.QueueServiceStub(ch)
    q = stub.ResumeQueue(qs.ResumeQueueRequest(name=args.name), timeout=TIMEOUT).queue
    return _one_queue(args, q, f"resumed {q.name}")


# -- wiring ---------------------------------------------------------------------------------------
def _run(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            with channel(args) as ch:
                return handler(args, ch)
        except grpc.RpcError as err:
            print(output.describe_error(err), file=sys.stderr)
            return 1
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return run


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    add_connection_args(p)
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    return p


def _dlq_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", default="", help="only this queue")
    p.add_argument("--kind", default="", help="only this kind")
    p.add_argument(
        "--failed-before",
        type=parse_time,
        metavar="TIME",
        help="failed before TIME: ISO 8601 or an age (7d = more than 7 days ago)",
    )
    p.add_argument(
        "--failed-after", type=parse_time, metavar="TIME", help="failed at or after TIME"
    )


def _bulk_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="act on every dead letter (no filter)")
    p.add_argument("--dry-run", action="store_true", help="count what would be done, do nothing")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--chunk", type=int, default=500, help="dead letters per call (500)")


def register(sub: Any) -> None:
    common = _common()

    def leaf(group: Any, name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help_)
        p.set_defaults(func=_run(handler))
        return p

    jobs = sub.add_parser("jobs", help="enqueue, inspect and cancel jobs (over gRPC)")
    g = jobs.add_subparsers(dest="action", required=True)
    p = leaf(g, "enqueue", jobs_enqueue, "enqueue one job")
    p.add_argument("kind")
    p.add_argument("--queue", default="", help="queue (default: the server's, 'default')")
    p.add_argument("--payload", default="{}", help="JSON object")
    p.add_argument("--priority", type=int, default=0, help="smaller runs first")
    p.add_argument("--max-attempts", type=int, default=0, help="0: the server's default")
    p.add_argument("--run-at", type=parse_time, help="not before this ISO 8601 time")
    p.add_argument("--idempotency-key", default="")
    p.add_argument(
        "--label", type=parse_label, action="append", metavar="KEY=VALUE", help="metadata (repeat)"
    )
    leaf(g, "get", jobs_get, "show one job").add_argument("id")
    p = leaf(g, "list", jobs_list, "list jobs, newest first")
    p.add_argument("--queue", default="")
    p.add_argument("--kind", default="")
    p.add_argument("--state", choices=STATES)
    p.add_argument("--created-before", type=parse_time, metavar="TIME", help="ISO 8601 or an age")
    p.add_argument(
        "--label",
        type=parse_label,
        action="append",
        metavar="KEY=VALUE",
        help="only jobs whose metadata holds this pair (repeat: all of them)",
    )
    p.add_argument("--limit", type=int, default=100, help="show at most this many (100)")
    p = leaf(g, "cancel", jobs_cancel, "cancel a job, or every job matching the filters")
    p.add_argument("id", nargs="?", help="a job id; without it, the filters choose")
    p.add_argument("--queue", default="")
    p.add_argument("--kind", default="")
    p.add_argument("--state", choices=STATES)
    p.add_argument("--created-before", type=parse_time, metavar="TIME", help="ISO 8601 or an age")
    p.add_argument("--dry-run", action="store_true", help="count what would be cancelled")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    dlq = sub.add_parser("dlq", help="the dead-letter queue: find, inspect, requeue, purge")
    g = dlq.add_subparsers(dest="action", required=True)
    p = leaf(g, "list", dlq_list, "list dead letters, newest failure first")
    _dlq_filters(p)
    p.add_argument("--limit", type=int, default=100, help="show at most this many (100)")
    leaf(g, "show", dlq_show, "one dead letter with every attempt's error").add_argument("id")
    p = leaf(g, "stats", dlq_stats, "totals by queue and kind, oldest and newest failure")
    _dlq_filters(p)
    p = leaf(g, "requeue", dlq_requeue, "requeue one dead letter by id, or every one matching")
    p.add_argument("id", nargs="?", help="a job id; without it, the filters choose")
    _dlq_filters(p)
    _bulk_flags(p)
    leaf(g, "delete", dlq_delete, "delete one dead letter (and its failed job)").add_argument("id")
    p = leaf(g, "purge", dlq_purge, "delete every dead letter matching the filters")
    _dlq_filters(p)
    _bulk_flags(p)

    queues = sub.add_parser("queues", help="queues: live counts, pause, resume, limits")
    g = queues.add_subparsers(dest="action", required=True)
    leaf(g, "list", queues_list, "every queue with live counts by state")
    p = leaf(g, "show", queues_show, "one queue")
    p.add_argument("name")
    p.add_argument("--by-key", action="store_true", help="jobs running per concurrency key")
    p = leaf(g, "limit", queues_limit, "set or clear a queue's flow control (every flag: 0 = none)")
    p.add_argument("name")
    p.add_argument("--max-running", type=int, help="at most N running in the queue")
    p.add_argument("--key-max-running", type=int, help="at most N running per concurrency key")
    p.add_argument("--rate", type=float, help="at most N starts per second in the queue")
    p.add_argument("--burst", type=float, help="the queue's bucket (default: the rate, >= 1)")
    p.add_argument("--key-rate", type=float, help="at most N starts per second per key")
    p.add_argument("--key-burst", type=float, help="each key's bucket (default: the key rate)")
    p.add_argument("--fair-share", action="store_true", help="round-robin across keys")
    p.add_argument("--kind", help="set the limits of this kind of the queue's jobs (both apply)")
    p.add_argument("--clear", action="store_true", help="remove every limit (of --kind's)")
    leaf(g, "pause", queues_pause, "stop dispatch from a queue (enqueue still works)").add_argument(
        "name"
    )
    leaf(g, "resume", queues_resume, "resume dispatch; the backlog goes out at once").add_argument(
        "name"
    )
